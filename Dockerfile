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
EXPOSE 12345
# Python as PID 1 gets SIGTERM from `docker stop`; the server drains on it and exits 0.
HEALTHCHECK --interval=2s --timeout=2s --start-period=5s --retries=10 \
  CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('SERVER_PORT', '12345'))), 2).close()"]
ENTRYPOINT ["python", "-m", "reactor"]

FROM base AS client
COPY client/ client/
USER lottery
ENTRYPOINT ["python", "-m", "client"]
