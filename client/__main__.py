"""`python -m client` (installed: `lottery-agency`): one agency's run against the central.

    python -m client [--agency N --data FILE ...]        the agency's run
    python -m client digest --data FILE [--rows N]       the digest of a file's first N bets

Every way a run ends is one line and an exit code from the EXIT_ constants below.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import sys
from contextlib import closing
from typing import Sequence

from protocol import AgencyDigest
from runtime.logfmt import configure_logging, log_event
from runtime.settings import (
    EXIT_CONFIG,
    Option,
    choice,
    load_settings,
    log_level,
    non_negative_int,
    positive_int,
    program_name,
)

from .agency import Agency, AgencyConfig, AgencyFailed, FileMismatch, NoDraw, ReceiptMismatch, ServerNotFound
from .receipt import digest_bets
from .rows import BetFile, DataFileError, InvalidRow, log_invalid_row

log = logging.getLogger("client")

EXIT_DONE, EXIT_FAILED, EXIT_INVALID_ROW, EXIT_NO_DRAW = 0, 1, 3, 4
EXIT_FILE_MISMATCH, EXIT_RECEIPT_MISMATCH = 5, 6

DESCRIPTION = """An agency of the lottery: reads its bets from a CSV file, sends them to
the central in batches, says DONE and prints its winners. A rerun resumes where
the central's stored bets end. It speaks protocol version 2 (falling back to 1 for
a central that speaks only 1): before sending, it checks that the bets the central
already holds are this file's first ones, and at DONE it checks the central's
receipt (the count and sha256 digest of its bets, shown on the final line).
`python -m client digest --help`: the digest of a file, to check a receipt by hand.

The file: first_name,last_name,document,birthdate,number per line; no header;
UTF-8 (a byte order mark at its start is ignored); CRLF or LF; blank lines
ignored. Spaces and tabs around a field are not part of it: they are removed
before the row is checked and sent, so ' Ana , Gómez ' is stored as 'Ana',
'Gómez'; spaces inside a field ('María José') are kept.

Exit codes: 0 done, winners printed; 1 gave up (every retry failed) or refused
by the central; 2 bad settings (a flag, variable, config.ini section, key or
value; a data file that is not a readable file; a server name that does not
resolve); 3 stopped at an invalid row (every row before it is stored; fix it and
rerun); 4 no draw within --winners-timeout; 5 the central holds bets of this
agency that are not this file's first ones (another agency's file, or a row edited
since): nothing was sent; 6 the receipt at DONE does not match the bets sent;
128+N interrupted by signal N (130 Ctrl-C, 143 SIGTERM; a rerun resumes)."""

DIGEST_DESCRIPTION = """Print the agency digest (protocol version 2) of the first N bets of an agency
file, all of them by default, and their count: the sha256 an agency's receipt
shows, and `python -m reactor audit` prints per agency. The bets are those the
agency sends: the same row rules (a byte order mark, spaces around fields), and an
invalid row stopped at or skipped as --on-invalid says; a skipped row is not a bet.

Exit codes: 0 printed; 1 the file has fewer than N bets; 2 bad settings (a flag,
variable, config.ini section, key or value; a data file that is not a readable
file); 3 an invalid row before the N-th bet (with --on-invalid stop); 128+N
interrupted by signal N."""


def agency_number(text: str) -> int:
    value = positive_int(text)
    if value > MAX_AGENCY:
        raise ValueError(f"must be 1 to {MAX_AGENCY}")
    return value


def token(text: str) -> str:
    if len(text.encode("utf-8")) > MAX_TOKEN_BYTES:
        raise ValueError(f"must be at most {MAX_TOKEN_BYTES} bytes")
    return text


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


SERVER_FLAGS = "--server HOST:PORT, CLI_SERVER_ADDRESS or [server] address"
MAX_AGENCY = 2**32 - 1  # HELLO's agency is a u32
MAX_TOKEN_BYTES = 2**16 - 1  # HELLO's token is a str: a u16 byte count

OPTIONS = [
    Option("agency", "CLI_ID", "client", "id", None, agency_number, "agency number, 1..N (required)", "N"),
    Option("server", "CLI_SERVER_ADDRESS", "server", "address", "127.0.0.1:12345", server_address,
           "the central's address ([::1]:12345 for IPv6)", "HOST:PORT"),
    Option("data", "CLI_DATA_FILE", "client", "data", "/data/agency.csv", str, "the agency's CSV file", "PATH"),
    Option("batch_max_amount", "CLI_BATCH_MAXAMOUNT", "batch", "maxAmount", AgencyConfig.max_amount, positive_int,
           "bets per batch; fewer only when a frame would exceed 8 KiB (150 fits typical rows)", "K"),
    Option("window", "CLI_WINDOW", "client", "window", AgencyConfig.window, positive_int,
           "batches sent before their ACKs arrive", "W"),
    Option("token", "CLI_TOKEN", "client", "token", "", token, "the agency's token, when the central requires one", "T",
           secret=True),
    Option("retries", "CLI_RETRIES", "client", "retries", AgencyConfig.retries, non_negative_int,
           "new sessions after a lost one before giving up", "R"),
    Option("on_invalid", "CLI_ON_INVALID", "client", "on_invalid", "stop", choice("stop", "skip"),
           "an invalid row: store every row before it and stop (exit 3), or skip it and report it", "stop|skip"),
    Option("winners_timeout", "CLI_WINNERS_TIMEOUT", "client", "winners_timeout", "0", seconds_or_forever,
           "seconds to wait in all for the draw, from asking for the winners, reconnections included "
           "(exit 4 past it); 0 waits as long as it takes", "S"),
    Option("tls", "CLI_TLS", "tls", "enabled", False, boolean, "connect with TLS", "true|false"),
    Option("tls_ca", "CLI_TLS_CA", "tls", "ca", None, str, "CA certificate (PEM) to verify the central with", "PATH"),
    Option("log_level", "CLI_LOG_LEVEL", "log", "level", "INFO", log_level, "DEBUG, INFO, WARNING or ERROR", "L"),
]


DIGEST_OPTIONS = [
    next(option for option in OPTIONS if option.name == "data"),
    next(option for option in OPTIONS if option.name == "on_invalid"),
    Option("rows", None, None, None, None, non_negative_int,
           "the first N bets (a skipped invalid row is not one); all by default", "N"),
]


class Interrupted(BaseException):
    """SIGTERM or SIGINT: stop sending and leave, closing what is open."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    # First of all, so that Ctrl-C at any point (reading settings, counting rows) is one line.
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["digest"]:
        return _digest(argv[1:])
    prog = program_name("python -m client")
    try:
        return _run(prog, argv)
    except Interrupted as interrupted:  # before the run: logging may not be set up yet
        print(f"{prog}: interrupted ({interrupted}) before the run began", file=sys.stderr)
        return 128 + interrupted.signum


def _run(prog: str, argv: Sequence[str] | None) -> int:
    settings = load_settings("python -m client", DESCRIPTION, OPTIONS, "CLI_CONFIG", argv)
    if settings.agency is None:
        print(f"{prog}: error: the agency number is required (--agency, CLI_ID or [client] id)", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    # A closed stdout (`| head`) must not end the agency's run half way, nor print a
    # traceback per log line: the bets still go to the central, the lines are dropped.
    logging.raiseExceptions = False
    try:
        bet_file = BetFile(settings.data, settings.on_invalid, agency=settings.agency)
        rows = bet_file.count_rows()
    except (DataFileError, OSError) as error:
        message = error if isinstance(error, DataFileError) else f"data file {settings.data}: {error.strerror}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = settings.server
    config = AgencyConfig(
        agency=settings.agency, host=host, port=port, max_amount=settings.batch_max_amount,
        window=settings.window, token=settings.token, retries=settings.retries,
        winners_timeout=settings.winners_timeout, tls=settings.tls, tls_ca=settings.tls_ca,
    )
    try:
        agency = Agency.from_file(config, bet_file, total_rows=rows)
    except (OSError, ssl.SSLError) as error:
        print(f"{prog}: error: TLS CA certificate {settings.tls_ca}: {getattr(error, 'strerror', None) or error}",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = agency.run()
    except Interrupted as interrupted:
        log_event(log, logging.INFO, "interrupcion", "success", signal=interrupted, agency=settings.agency)
        return 128 + interrupted.signum
    except InvalidRow as invalid:
        log_invalid_row(invalid.problem, settings.agency, stopping=True)
        return EXIT_INVALID_ROW
    except ServerNotFound as not_found:
        print(f"{prog}: error: {not_found}; the central's address is set with {SERVER_FLAGS}", file=sys.stderr)
        return EXIT_CONFIG
    except FileMismatch as mismatch:
        log_event(log, logging.ERROR, "verificacion_archivo", "fail", agency=settings.agency, file=settings.data,
                  reason=mismatch)
        return EXIT_FILE_MISMATCH
    except ReceiptMismatch as mismatch:
        log_event(log, logging.ERROR, "recibo", "fail", agency=settings.agency, file=settings.data, reason=mismatch)
        return EXIT_RECEIPT_MISMATCH
    except NoDraw as no_draw:
        log_event(log, logging.ERROR, "espera_sorteo", "fail", agency=settings.agency, reason=no_draw)
        return EXIT_NO_DRAW
    except AgencyFailed as failed:
        log_event(log, logging.ERROR, "agencia", "fail", agency=settings.agency, reason=failed)
        return EXIT_FAILED
    _say(f"agency {settings.agency}: {len(result.winners)} winners: {' '.join(result.winners) or '-'}")
    # The receipt the central confirmed (version 2 only): digest(almacenadas) of this file's bets.
    receipt = {} if result.receipt is None else {"sha256": result.receipt.hex()}
    log_event(
        log, logging.INFO, "resumen", "success", agency=settings.agency,
        filas=rows, almacenadas=result.total, ya_almacenadas=result.stored_before, enviadas=result.sent,
        omitidas=result.skipped, segundos_envio=f"{result.ingest_seconds:.2f}",
        apuestas_por_segundo=round(result.sent / max(result.ingest_seconds, 1e-9)),
        segundos_total=f"{result.elapsed:.2f}", **receipt,
    )
    return EXIT_DONE


def _digest(argv: Sequence[str]) -> int:
    """`python -m client digest`: the digest and count of a file's first bets, on one line."""
    prog = program_name("python -m client digest")
    try:
        settings = load_settings("python -m client digest", DIGEST_DESCRIPTION, DIGEST_OPTIONS, "CLI_CONFIG", argv,
                                 known=OPTIONS)
        # stdout holds the result alone; a skipped row's warning goes to stderr.
        configure_logging("WARNING", logging.StreamHandler(sys.stderr))
        state = AgencyDigest()
        bet_file = BetFile(settings.data, settings.on_invalid)
        with closing(bet_file.bets()) as bets:
            count = digest_bets(state, bets, settings.rows)
    except Interrupted as interrupted:
        print(f"{prog}: interrupted ({interrupted})", file=sys.stderr)
        return 128 + interrupted.signum
    except (DataFileError, OSError) as error:
        message = error if isinstance(error, DataFileError) else f"data file {settings.data}: {error.strerror}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_CONFIG
    if bet_file.stopped_at is not None:
        print(f"{prog}: error: {bet_file.stopped_at} (an agency stops at this row; --on-invalid skip skips it)",
              file=sys.stderr)
        return EXIT_INVALID_ROW
    if settings.rows is not None and count < settings.rows:
        print(f"{prog}: error: {settings.data} has {count} bets, fewer than --rows {settings.rows}", file=sys.stderr)
        return EXIT_FAILED
    _say(f"bets: {count} | sha256: {state.digest().hex()}")
    return EXIT_DONE


def _say(line: str) -> None:
    """Prints the run's result; a reader that went away (| head) is not the run's failure."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush finds no pipe


if __name__ == "__main__":
    sys.exit(main())
