"""`export` and `stats`: read a central's database with the central's own settings.

Both commands find the database as the server does (`--db`, else SERVER_DB, else
`[server] db` of the server's config.ini, else its default), so `docker exec server
python -m reactor stats` reads the database the server in that container serves.
Neither writes to the database. Each ends with one line on a mistake and an exit
code from `EXIT_CODES`.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Callable, Sequence

from runtime.settings import EXIT_CONFIG, Option, __version__, load_settings, program_name

from .status import DrawFigures, build_status
from .store import DatabaseUnusable, Store

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED = 0, 1, 130, 141

EXIT_CODES = """Exit codes: 0 done; 1 the database cannot be read or the output cannot be
written; 2 bad arguments or settings (a missing database, an output directory that
does not exist); 130 interrupted (Ctrl-C); 141 the output's reader went away (| head)."""

class CommandError(Exception):
    """A command cannot go on: one line for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def export(argv: Sequence[str], server_options: Sequence[Option]) -> int:
    prog = program_name("python -m reactor export")
    csv_option = Option("csv", None, None, None, None, str, "output file, '-' for stdout (required)", "OUT")
    settings = load_settings(
        prog,
        "Write every bet in arrival order as the course's bets.csv:\n"
        "agency,first_name,last_name,document,birthdate,number (UTF-8, LF).\n"
        "The file appears only once complete: a failed or interrupted export leaves none.\n\n" + EXIT_CODES,
        [_db_option(server_options), csv_option], "SERVER_CONFIG", argv, known=server_options,
    )
    return _run(prog, lambda: _export(settings.db, settings.csv))


def stats(argv: Sequence[str], server_options: Sequence[Option]) -> int:
    prog = program_name("python -m reactor stats")
    settings = load_settings(
        prog,
        "Print the central's state as JSON, read from its database: the schema of the\n"
        "admin listener's /status.json without its live fields (connections, bets per\n"
        "second, uptime): the expected agencies and those missing, per agency its stored\n"
        "bets (committed), whether it is done and, once the draw is done, its winners;\n"
        "the total; the draw (open, drawing or done, rows scanned, winning number).\n\n" + EXIT_CODES,
        [_db_option(server_options)], "SERVER_CONFIG", argv, known=server_options,
    )
    return _run(prog, lambda: _stats(settings.db))


def _db_option(server_options: Sequence[Option]) -> Option:
    return next(option for option in server_options if option.name == "db")


def _run(prog: str, command: Callable[[], None]) -> int:
    """Runs a command; whatever goes wrong that a user can cause ends in one line and its code."""
    try:
        command()
    except CommandError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.code
    except BrokenPipeError:
        # `export --csv - | head -1`: the reader has what it wanted. Like a program
        # killed by SIGPIPE, stop quietly; stdout goes to /dev/null so that the
        # interpreter's final flush does not report the same closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OUTPUT_CLOSED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _export(db: str, out: str) -> None:
    if out is None:
        raise CommandError("--csv OUT is required ('-' for stdout)", EXIT_CONFIG)
    if out != "-":
        target = Path(out)
        if target.is_dir():
            raise CommandError(f"--csv {out} is a directory; name a file", EXIT_CONFIG)
        if not target.parent.is_dir():
            raise CommandError(f"--csv {out}: directory {target.parent} does not exist", EXIT_CONFIG)
    store = _open_existing(db)
    try:
        if out == "-":
            _write_bets(store, sys.stdout)
            sys.stdout.flush()  # a closed pipe shows here, inside _run, not at exit
            return
        partial = target.with_name(target.name + ".partial")
        try:
            with open(partial, "w", newline="", encoding="utf-8") as stream:
                _write_bets(store, stream)
            os.replace(partial, target)
        except BaseException as error:
            partial.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise CommandError(f"cannot write {out}: {error.strerror or error}", EXIT_FAILED) from None
            raise
    finally:
        store.close()


def _write_bets(store: Store, stream) -> None:
    writer = csv.writer(stream, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    try:
        writer.writerows(store.iter_bets())
    except sqlite3.Error as error:
        raise CommandError(f"reading the database failed: {error}", EXIT_FAILED) from None


def _stats(db: str) -> None:
    store = _open_existing(db)
    try:
        report = stats_document(store)
    except sqlite3.Error as error:
        raise CommandError(f"reading the database failed: {error}", EXIT_FAILED) from None
    finally:
        store.close()
    print(json.dumps(report, indent=2))
    sys.stdout.flush()


def stats_document(store: Store) -> dict:
    """The status document (reactor.status) of a database, without the live fields:
    `GET /status.json` of the central serving it says the same, plus those. Read in
    one read transaction, so it is one commit's state even while a central serves."""
    with store.snapshot():
        agencies = store.agencies()
        record = store.lottery()
        draw = store.draw()
        winners = store.winners() if draw is not None and draw.finished else None
        digests = {number: state.digest for number, state in agencies.items() if state.digest is not None}
    revealed = record.seed if record is not None and draw is not None else None
    return build_status(
        version=__version__,
        # A database records its agency count when a central first serves it.
        expected=record.agencies if record is not None else max(agencies, default=0),
        committed={number: state.committed for number, state in agencies.items()},
        done={number for number, state in agencies.items() if state.done},
        draw=DrawFigures.of(draw, winners, record.commitment if record else None, revealed),
        digests=digests,
    )


def _open_existing(path: str) -> Store:
    """The central's database at `path`, opened read-only: nothing is created in a
    wrong file, and a central serving from it is never in the way."""
    where = "set it with --db, SERVER_DB or [server] db"
    if not Path(path).exists():
        raise CommandError(f"database {path} does not exist ({where})", EXIT_CONFIG)
    if not Path(path).is_file():
        raise CommandError(f"database {path} is not a file ({where})", EXIT_CONFIG)
    try:
        return Store(path, read_only=True)
    except DatabaseUnusable as error:
        raise CommandError(str(error), EXIT_FAILED) from None
    except (sqlite3.Error, OSError) as error:
        raise CommandError(f"cannot open database {path}: {error}", EXIT_FAILED) from None
