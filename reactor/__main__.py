"""`python -m reactor` (installed: `lottery-central`): the lottery central.

    python -m reactor [--port 12345 --db ./data/bets.db ...]   serve
    python -m reactor export --csv OUT [--db PATH]               all bets as the course's bets.csv
    python -m reactor stats [--db PATH]                          JSON: agencies, totals, the draw

`export` and `stats` live in `commands`; they read the database the server's
settings name.
"""

from __future__ import annotations

import gc
import logging
import signal
import sqlite3
import ssl
import sys
from pathlib import Path
from typing import Sequence

from runtime.logbuffer import BufferedLogHandler
from runtime.logfmt import configure_logging, log_event
from runtime.settings import (
    Option,
    SettingError,
    choice,
    load_settings,
    log_level,
    non_negative_int,
    positive_float,
    positive_int,
    program_name,
)

from . import commands
from .admin import AdminSession
from .dblock import DatabaseInUse, DatabaseLock
from .http import HttpError, RequestReader
from .limits import ConnectionLimits
from .loop import EventLoop
from .server import Server
from .service import RANDOM, VERIFIABLE, Lottery, LotteryConfig, LotteryMismatch
from .store import DatabaseLost, DatabaseUnusable, Store
from .turn import TurnEnd
from .watch import CentralStatus

log = logging.getLogger("reactor")

DESCRIPTION = """The lottery central: takes agencies' bets over the Lottery Bet Protocol,
stores them durably in SQLite, runs the draw once every agency is done, and answers
each agency's winners. One thread, one process, a selectors loop.

Other commands (add --help to one for its own):
  export --csv OUT   write every bet as agency,first_name,last_name,document,birthdate,number
  stats              print the status document as JSON: agencies, receipts, totals, the draw
  audit [--json]     check the whole database: integrity, counts, bets, digests, winners, draw
All three read the database the settings below name (--db, SERVER_DB, [server] db),
read-only, also while a central serves from it.

The admin listener (--admin-port, 127.0.0.1:12346 by default) serves GET /livez,
/readyz, /metrics (Prometheus), /status.json and / (a live status page).

Exit codes: 0 stopped by SIGTERM, SIGINT or SIGHUP after draining; 1 could not
start (the database is in use, damaged, not a central's, or holds a lottery these
settings contradict; an address cannot be listened on); 2 bad settings (a flag,
variable, config.ini section, key or value); 3 stopped on purpose after a fault it
could not isolate (the database deleted or replaced while serving, a fault at the
end of a turn): a restart recovers from the database."""

MAX_AGENCIES = 100_000  # the service keeps an account per expected agency


def winning_number(text: str) -> int | str:
    word = text.strip().lower()
    if word in (RANDOM, VERIFIABLE):
        return word
    value = int(text)
    if not 0 <= value <= 9999:
        raise ValueError("must be 0 to 9999, 'random' or 'verifiable'")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0 to 65535")
    return value


def port_or_off(text: str) -> int | None:
    return None if text.strip().lower() == "off" else port_number(text)


def agency_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_AGENCIES:
        raise ValueError(f"must be 1 to {MAX_AGENCIES}")
    return value


OPTIONS = [
    Option("host", "SERVER_HOST", "server", "host", "0.0.0.0", str, "address to listen on"),
    Option("port", "SERVER_PORT", "server", "port", 12345, port_number, "TCP port (0 picks a free one)"),
    Option("db", "SERVER_DB", "server", "db", "./data/bets.db", str, "SQLite database file"),
    Option("agencies", "SERVER_AGENCIES", "lottery", "agencies", 5, agency_count,
           "number of agencies expected (1..N); the draw waits for all of them"),
    Option("durability", "SERVER_DURABILITY", "server", "durability", "full", choice("full", "normal", "off"),
           "full: on disk before the ACK; normal: safe from a process crash; off: no fsync"),
    Option("winning_number", "SERVER_WINNING_NUMBER", "lottery", "winning_number", 7574, winning_number,
           "winning number 0..9999; 'random' to draw one with the secrets module at the draw; 'verifiable' "
           "to commit to a secret seed before any bet and derive the number from it and every agency's "
           "digest (PROTOCOL.md version 2): anyone can check it"),
    Option("max_connections", "SERVER_MAX_CONNECTIONS", "server", "max_connections", 20000, positive_int,
           "connections served at once; above it a peer gets SERVER_BUSY"),
    Option("max_unidentified", "SERVER_MAX_UNIDENTIFIED", "server", "max_unidentified", 0, non_negative_int,
           "connections that have not sent HELLO yet, at most; the oldest makes room for a newcomer "
           "(0: a quarter of --max-connections, at least 16)"),
    Option("handshake_timeout", "SERVER_HANDSHAKE_TIMEOUT", "server", "handshake_timeout", 10.0, positive_float,
           "seconds a new connection has to send HELLO"),
    Option("idle_timeout", "SERVER_IDLE_TIMEOUT", "server", "idle_timeout", 60.0, positive_float,
           "seconds without progress before an idle session is closed (not while a query is held)"),
    Option("frame_timeout", "SERVER_FRAME_TIMEOUT", "server", "frame_timeout", 10.0, positive_float,
           "seconds a started frame has to finish"),
    Option("drain_timeout", "SERVER_DRAIN_TIMEOUT", "server", "drain_timeout", 5.0, positive_float,
           "seconds SIGTERM/SIGINT waits for sessions to get their answers before aborting them"),
    Option("tokens", "SERVER_TOKENS_FILE", "server", "tokens", None, str,
           "file of agency=token lines; when set, HELLO must carry the agency's token"),
    Option("tls_cert", "SERVER_TLS_CERT", "tls", "cert", None, str, "PEM certificate: serve TLS"),
    Option("tls_key", "SERVER_TLS_KEY", "tls", "key", None, str, "PEM private key for --tls-cert"),
    Option("admin_host", "SERVER_ADMIN_HOST", "admin", "host", "127.0.0.1", str,
           "address of the admin listener (health, metrics, status page)"),
    Option("admin_port", "SERVER_ADMIN_PORT", "admin", "port", "12346", port_or_off,
           "port of the admin listener (0 picks a free one; off disables it)"),
    Option("log_level", "LOGGING_LEVEL", "log", "level", "INFO", log_level, "DEBUG, INFO, WARNING or ERROR"),
]


def read_tokens(path: str) -> dict[int, str]:
    tokens = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SettingError(f"tokens file {path}: {error.strerror}") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        agency, sep, token = line.partition("=")
        if not sep or not agency.strip().isdigit() or not token.strip():
            raise SettingError(f"tokens file {path}:{number}: expected agency=token")
        tokens[int(agency)] = token.strip()
    return tokens


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise SettingError("--tls-key needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise SettingError(f"TLS certificate {cert}: {error}") from None
    return context


EXIT_DRAINED, EXIT_CANNOT_START, EXIT_CONFIG, EXIT_FAULT = 0, 1, 2, 3
PROG = "python -m reactor"


def serve(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(PROG, DESCRIPTION, OPTIONS, "SERVER_CONFIG", argv)
    logs = _log_output()
    configure_logging(settings.log_level, logs)
    try:
        return _serve(settings, logs)
    finally:
        if logs is not None:
            logs.flush_within(2.0)  # what is left, unless nobody reads: exit never waits longer


def _serve(settings, logs: BufferedLogHandler | None) -> int:
    try:
        tokens = read_tokens(settings.tokens) if settings.tokens else {}
        tls = tls_context(settings.tls_cert, settings.tls_key)
        limits = ConnectionLimits(
            handshake_timeout=settings.handshake_timeout,
            idle_timeout=settings.idle_timeout,
            frame_timeout=settings.frame_timeout,
        )
    except SettingError as error:
        print(f"{program_name(PROG)}: error: {error}", file=sys.stderr)
        return EXIT_CONFIG

    lock = DatabaseLock(settings.db)
    try:
        lock.acquire()
        store = Store(settings.db, settings.durability)
    except (DatabaseInUse, DatabaseUnusable, OSError, sqlite3.Error) as error:
        log_event(log, logging.ERROR, "open_database", "fail", db=settings.db, error=error)
        lock.release()
        return EXIT_CANNOT_START
    loop = EventLoop()
    try:
        lottery = Lottery(store, LotteryConfig(settings.agencies, settings.winning_number, tokens), loop)
        server = Server(
            loop, lottery, settings.host, settings.port, limits,
            settings.max_connections, settings.drain_timeout, tls,
            max_unidentified=settings.max_unidentified or None,
        )
    except (LotteryMismatch, DatabaseUnusable, sqlite3.DatabaseError) as error:  # or pages damaged past the header
        log_event(log, logging.ERROR, "open_database", "fail", db=settings.db, error=str(error).replace("|", "/"))
        return _close(loop, store, lock, settings.db, EXIT_CANNOT_START)
    except OSError as error:
        log_event(log, logging.ERROR, "accept_connections", "fail", port=settings.port, error=error.strerror)
        return _close(loop, store, lock, settings.db, EXIT_CANNOT_START)
    watch = None
    if settings.admin_port is not None:
        watch = CentralStatus(lottery, server, loop, logs)
        try:
            server.open_admin(settings.admin_host, settings.admin_port, limits,
                              new_handler=lambda connection: AdminSession(connection, watch),
                              new_decoder=RequestReader, decode_error=HttpError)
        except OSError as error:
            log_event(log, logging.ERROR, "accept_admin_connections", "fail", port=settings.admin_port,
                      error=error.strerror)
            return _close(loop, store, lock, settings.db, EXIT_CANNOT_START, server)

    def on_signal(signum: int) -> None:
        log_event(log, logging.INFO, "signal", "success", signal=signal.Signals(signum).name)
        server.drain()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)
    loop.add_fault_listener(lottery.fault_in_turn)
    end_of_turn = TurnEnd(lottery, loop, server.budget, logs, watch.turn_ended if watch else None)
    loop.set_end_of_turn(end_of_turn)
    # What exists now (modules, classes, the recovered state) lives as long as the
    # process: out of the cyclic GC's sight, a full collection with many sessions
    # alive has far fewer objects to walk.
    gc.collect()
    gc.freeze()
    try:
        end_of_turn()  # the start's lines go out (or wait to be watched for) before the first turn
        loop.run()
        end_of_turn(final=True)  # anything staged in the last turns is committed before closing
    except DatabaseLost as error:
        log_event(log, logging.ERROR, "stop", "fail", reason=error, acknowledged="nothing after it")
        return _close(loop, store, lock, settings.db, EXIT_FAULT, server)
    except Exception as error:  # the end of a turn failed: the shared state cannot be trusted
        log.error("action: stop | result: fail | reason: fault at the end of a turn: %r", error, exc_info=error)
        return _close(loop, store, lock, settings.db, EXIT_FAULT, server)
    log_event(
        log, logging.INFO, "loop_stats", "success",
        turns=loop.turns,
        longest_turn_ms=f"{loop.longest_turn * 1000:.1f}",
        commits=store.commits,
        longest_commit_ms=f"{store.longest_commit * 1000:.1f}",
        longest_checkpoint_ms=f"{store.longest_checkpoint * 1000:.1f}",
        connections_accepted=server.accepted,
        faults=loop.faults,
    )
    return _close(loop, store, lock, settings.db, EXIT_DRAINED, server)


def _close(loop: EventLoop, store: Store, lock: DatabaseLock, db: str, code: int, server: Server | None = None) -> int:
    if server is not None:
        server.close()
    loop.close()
    store.close()
    lock.release()
    log_event(log, logging.INFO, "close_database", "success", db=db)
    return code


def _log_output() -> BufferedLogHandler | None:
    """The server's log handler: never blocks the loop (None when stdout is closed)."""
    try:
        return BufferedLogHandler(sys.stdout.fileno())
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return commands.export(argv[1:], OPTIONS)
    if argv and argv[0] == "stats":
        return commands.stats(argv[1:], OPTIONS)
    if argv and argv[0] == "audit":
        from . import audit  # a command of its own: serving never loads it

        return audit.main(argv[1:], OPTIONS)
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
