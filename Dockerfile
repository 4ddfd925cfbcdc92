# One image definition, two targets: `server` (python -m reactor) and `client` (python -m client).
# Standard library only: nothing is installed beyond the base image.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home lottery \
 && mkdir -p /app /var/lib/lottery /config /data \
 && chown lottery /var/lib/lottery
WORKDIR /app
COPY protocol/ protocol/
COPY runtime/ runtime/

FROM base AS server
COPY reactor/ reactor/
USER lottery
# 12345: the agencies; 12346: the admin listener (status page, /metrics, /livez, /readyz).
EXPOSE 12345 12346
# Python as PID 1 gets SIGTERM from `docker stop`; the server drains on it and exits 0.
# Healthy means ready: the central accepts agencies and its store can write (/readyz 200;
# a 503 or no answer raises, so the check fails). Not a bare TCP connect, which the
# central would count as an agency that never says HELLO.
HEALTHCHECK --interval=2s --timeout=3s --start-period=5s --retries=10 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SERVER_ADMIN_PORT', '12346'), timeout=2)"]
ENTRYPOINT ["python", "-m", "reactor"]

FROM base AS client
COPY client/ client/
USER lottery
ENTRYPOINT ["python", "-m", "client"]
