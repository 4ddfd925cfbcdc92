"""`python -m client`: one agency's run against the central.

Exit codes: 0 done (winners received); 1 gave up or refused by the server;
2 bad configuration; 3 stopped at an invalid row; 128+N interrupted by signal N.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Sequence

from runtime.logfmt import configure_logging, log_event
from runtime.settings import Option, choice, load_settings, log_level, non_negative_int, positive_int

from .agency import Agency, AgencyConfig, AgencyFailed
from .rows import BetFile, InvalidRow

log = logging.getLogger("client")

EXIT_FAILED, EXIT_CONFIG, EXIT_INVALID_ROW = 1, 2, 3

DESCRIPTION = """An agency of the lottery: reads its bets from a CSV file
(first_name,last_name,document,birthdate,number; no header; UTF-8; CRLF or LF),
sends them to the central in batches, says DONE and prints its winners.
A rerun resumes where the central's stored bets end."""


def server_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError("must be HOST:PORT")
    return host.strip("[]"), int(port)


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def seconds_or_forever(text: str) -> float | None:
    value = float(text)
    if value < 0:
        raise ValueError("must be 0 (wait forever) or more")
    return value or None


OPTIONS = [
    Option("agency", "CLI_ID", "client", "id", None, positive_int, "agency number, 1..N (required)", "N"),
    Option("server", "CLI_SERVER_ADDRESS", "server", "address", ("server", 12345), server_address,
           "the central's address", "HOST:PORT"),
    Option("data", "CLI_DATA_FILE", "client", "data", "/data/agency.csv", str, "the agency's CSV file", "PATH"),
    Option("batch_max_amount", "CLI_BATCH_MAXAMOUNT", "batch", "maxAmount", 150, positive_int,
           "bets per batch; fewer only when a frame would exceed 8 KiB (150 fits typical rows)", "K"),
    Option("window", "CLI_WINDOW", "client", "window", 8, positive_int, "batches sent before their ACKs arrive", "W"),
    Option("token", "CLI_TOKEN", "client", "token", "", str, "the agency's token, when the central requires one", "T"),
    Option("retries", "CLI_RETRIES", "client", "retries", 10, non_negative_int,
           "new sessions after a lost one before giving up", "R"),
    Option("on_invalid", "CLI_ON_INVALID", "client", "on_invalid", "stop", choice("stop", "skip"),
           "an invalid row: stop before it (exit 3), or skip it and report it", "stop|skip"),
    Option("winners_timeout", "CLI_WINNERS_TIMEOUT", "client", "winners_timeout", None, seconds_or_forever,
           "seconds to wait for the draw; 0 or unset waits as long as it takes", "S"),
    Option("tls", "CLI_TLS", "tls", "enabled", False, boolean, "connect with TLS", "true|false"),
    Option("tls_ca", "CLI_TLS_CA", "tls", "ca", None, str, "CA certificate (PEM) to verify the central with", "PATH"),
    Option("log_level", "CLI_LOG_LEVEL", "log", "level", "INFO", log_level, "DEBUG, INFO, WARNING or ERROR", "L"),
]


class Interrupted(BaseException):
    """SIGTERM or SIGINT: stop sending and leave, closing what is open."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings("python -m client", DESCRIPTION, OPTIONS, "CLI_CONFIG", argv)
    if settings.agency is None:
        print("python -m client: error: the agency number is required (--agency, CLI_ID or [client] id)",
              file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    try:
        bet_file = BetFile(settings.data, settings.on_invalid)
    except OSError as error:
        print(f"python -m client: error: data file {settings.data}: {error.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = settings.server
    config = AgencyConfig(
        agency=settings.agency, host=host, port=port, max_amount=settings.batch_max_amount,
        window=settings.window, token=settings.token, retries=settings.retries,
        winners_timeout=settings.winners_timeout, tls=settings.tls, tls_ca=settings.tls_ca,
    )
    # ~47 bytes a row in the course's files: a cheap estimate of the total for progress lines
    agency = Agency.from_file(config, bet_file, size_hint=max(1, bet_file.size // 47))
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        result = agency.run()
    except Interrupted as interrupted:
        log_event(log, logging.INFO, "interrupcion", "success", signal=interrupted, agency=settings.agency)
        return 128 + interrupted.signum
    except InvalidRow as invalid:
        problem = invalid.problem
        log_event(log, logging.ERROR, "fila_invalida", "fail", file=f"{problem.path}:{problem.line}",
                  field=problem.field, reason=problem.reason)
        return EXIT_INVALID_ROW
    except AgencyFailed as failed:
        log_event(log, logging.ERROR, "agencia", "fail", agency=settings.agency, reason=failed)
        return EXIT_FAILED
    print(f"agency {settings.agency}: {len(result.winners)} winners: {' '.join(result.winners) or '-'}")
    log_event(
        log, logging.INFO, "resumen", "success",
        agency=settings.agency, enviadas=result.sent, almacenadas=result.total, omitidas=result.skipped,
        segundos=f"{result.elapsed:.2f}", apuestas_por_segundo=round(result.sent / max(result.elapsed, 1e-9)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
