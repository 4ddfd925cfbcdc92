"""Test harness: what several test modules share, in one place.

- the real server as a subprocess (`ServerProcess`), a raw protocol peer (`Peer`),
  agencies run with the client library on threads (`AgencyRuns`, `run_agencies`) and
  what they had acknowledged (`AckTracker`);
- bets and frames to send (`BET`, `bets`, `raw_bet`, `bets_payload`, `raw_frame`), agency
  files and what the central stored of them (`write_rows`, `file_rows`, `exported_rows`,
  `stored_rows`, `rows_by_agency`, `assert_files_stored_once_in_order`);
- the loop and connection the lottery service runs on, as fakes the test turns
  (`FakeLoop`, `FakeConnection`);
- the environment a child Python needs (`env_for`), one a child `make` may have
  (`env_without_make`), and the one error line a command ends with.

/proc readers come from bench/proc.py (`status_kb`, `fd_count`, `cpu_seconds`).
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import protocol as p
from bench.proc import status_kb
from client import Agency, AgencyConfig, BetFile
from datagen import bet_line, generate_bets

ROOT = Path(__file__).resolve().parents[1]
# The line the central prints once it listens (README, Logs), and its admin side's.
PORT_LINE = re.compile(r"action: accept_connections \| result: in_progress \| port: (\d+)")
ADMIN_PORT_LINE = re.compile(r"action: accept_admin_connections \| result: in_progress \| port: (\d+)")


class ServerProcess:
    """`python -m reactor` on 127.0.0.1 and a free port; its stdout is collected."""

    def __init__(self, db: Path, *args: str, module: str = "reactor", env: dict | None = None,
                 fd_limit: int | None = None) -> None:
        self.db = db
        # Any free port for the admin listener too: its default, 12346, may be taken.
        admin = [] if "--admin-port" in args else ["--admin-port", "0"]
        self.args = ["--host", "127.0.0.1", "--port", "0", "--db", str(db), *admin, *args]
        self.module = module
        self.env = env or {}
        self.fd_limit = fd_limit
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.port = 0
        self.admin_port = 0

    def start(self, timeout: float = 15.0) -> "ServerProcess":
        env = env_for(PYTHONUNBUFFERED="1", **self.env)
        limit = self.fd_limit

        def lower_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=lower_fd_limit if limit else None,
        )
        self.lines = []
        port_seen = threading.Event()
        self._reading = threading.Event()
        self._reading.set()

        def pump(stream, lines):
            for line in stream:
                lines.append(line.rstrip("\n"))
                admin = ADMIN_PORT_LINE.search(line)
                if admin:
                    self.admin_port = int(admin.group(1))
                match = PORT_LINE.search(line)
                if match:
                    self.port = int(match.group(1))
                    port_seen.set()
                if not self._reading.is_set():
                    return  # the pipe fills up from here on, as when nobody reads it

        self._pump = threading.Thread(target=pump, args=(self.proc.stdout, self.lines), daemon=True)
        self._pump.start()
        admin_on = self.args[self.args.index("--admin-port") + 1] != "off"
        if not port_seen.wait(timeout) or (admin_on and not wait_until(lambda: self.admin_port, timeout)):
            self.kill()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        return self

    def stop_reading_output(self) -> None:
        """Nobody reads the server's stdout any more (after at most one more line)."""
        self._reading.clear()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        self._pump.join(10)  # every line the server wrote is in self.lines from here on
        return code

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.wait(10)

    def wait_for_line(self, action: str, result: str | None = None, timeout: float = 10.0) -> bool:
        """While the server runs its output is read on a thread: wait for a line that must come."""
        return wait_until(lambda: self.log_lines(action, result), timeout=timeout)

    def log_lines(self, action: str, result: str | None = None) -> list[str]:
        needle = f"action: {action} | result: {result}" if result else f"action: {action} |"
        return [line for line in list(self.lines) if needle in line]

    def stored_counts(self) -> list[int]:
        return [int(line.split("cantidad: ")[1].split(" ")[0]) for line in self.log_lines("apuesta_recibida", "success")]

    def rss_kb(self) -> int:
        rss = status_kb(self.pid, "VmRSS")
        assert rss, "the server is gone"
        return rss

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop(10)
        except subprocess.TimeoutExpired:
            self.kill()


class Peer:
    """A raw protocol peer: sends frames or bytes, reads server messages, sees the close."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = p.FrameDecoder(p.Role.CLIENT)
        self.timeout = timeout

    def send(self, *messages) -> "Peer":
        self.sock.sendall(b"".join(m if isinstance(m, bytes) else p.encode(m) for m in messages))
        return self

    def hello(self, agency: int, token: str = "") -> p.Welcome:
        self.send(p.Hello(agency=agency, token=token))
        welcome = self.read()
        assert isinstance(welcome, p.Welcome), welcome
        return welcome

    def read(self, timeout: float | None = None):
        """The next message; None when the server closed the connection."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while True:
            for message in self.decoder.messages():
                return message
            if self.decoder.peer_closed:
                return None
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.decoder.receive_data(data)

    def closed(self, timeout: float | None = None) -> bool:
        return self.read(timeout) is None

    def close(self) -> None:
        self.sock.close()


# --- bets and frames ------------------------------------------------------------------
BET = p.Bet("Ana", "Gómez", "12345678", "1990-01-01", 1)


def bets(first: int, count: int, number: int = 1) -> p.Bets:
    """A batch of `count` valid bets numbered from `first`; each bet's document is its number."""
    return p.Bets(first, tuple(BET._replace(document=f"{first + i:08d}", number=number) for i in range(count)))


def raw_frame(frame_type: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame as bytes, whatever its type and payload (`length`: a header that lies)."""
    return struct.pack(">IB", len(payload) + 1 if length is None else length, frame_type) + payload


def raw_bet(first_name=b"Ana", last_name=b"G", document=b"1", birthdate=b"1990-01-01", number=1) -> bytes:
    """A bet's wire bytes, with fields no encoder would write."""
    def s(value: bytes) -> bytes:
        return struct.pack(">H", len(value)) + value

    return s(first_name) + s(last_name) + s(document) + s(birthdate) + struct.pack(">H", number)


def bets_payload(first: int, count: int, *bet_bytes: bytes) -> bytes:
    """A BETS payload around raw bets (`count` may differ from how many there are)."""
    return struct.pack(">IH", first, count) + b"".join(bet_bytes)


# --- agency files and what the central stored -------------------------------------------------
def write_rows(path: Path, rows: int, agency: int = 1, seed: int = 1) -> Path:
    """An agency file of `rows` generated valid bets."""
    path.write_text("".join(bet_line(b) for b in generate_bets(agency, rows, seed)), encoding="utf-8", newline="")
    return path


def agency_process(port: int, agency: int, data: Path, *args: str) -> subprocess.Popen:
    """`python -m client` for one agency against a central on 127.0.0.1, its output in one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "client", "--agency", str(agency), "--server", f"127.0.0.1:{port}",
         "--data", str(data), *args],
        cwd=ROOT, env=env_for(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Waits for an `agency_process`: its exit code and everything it printed."""
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@dataclass
class MidIngest:
    """One agency's run well under way against its central (see `one_agency_mid_ingest`)."""

    data: Path
    db: Path
    server: ServerProcess
    agency: subprocess.Popen

    def restart_server(self) -> None:
        """A new central on the same database and port, after the test killed or stopped the old one."""
        self.server = ServerProcess(self.db, "--agencies", "1", "--port", str(self.server.port)).start()


@contextmanager
def one_agency_mid_ingest(tmp_path: Path, rows: int = 60_000) -> Iterator[MidIngest]:
    """A central for one agency, and that agency sending `rows` bets in small batches
    with many retries, until over 20 batches are stored. At the end the agency is
    killed if it still runs (a failed step would leave it retrying for minutes) and
    the central of the moment is stopped."""
    data = write_rows(tmp_path / "agency-1.csv", rows)
    db = tmp_path / "bets.db"
    server = ServerProcess(db, "--agencies", "1").start()
    run = MidIngest(data, db, server, agency_process(server.port, 1, data, "--batch-max-amount", "50",
                                                     "--retries", "50"))
    try:
        assert wait_until(lambda: len(run.server.log_lines("apuesta_recibida", "success")) > 20, timeout=60)
        yield run
    finally:
        if run.agency.poll() is None:
            run.agency.kill()
            run.agency.wait()
        run.server.stop()


def exported_rows(db: Path) -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "reactor", "export", "--db", str(db), "--csv", "-"],
        cwd=ROOT, env=env_for(), capture_output=True, text=True, check=True,
    ).stdout
    return [line.split(",") for line in out.splitlines()]


def stored_rows(db: Path, agency: int = 1) -> list[list[str]]:
    """The rows the central stored for `agency`, in its file's column order."""
    return rows_by_agency(db).get(agency, [])


def rows_by_agency(db: Path) -> dict[int, list[list[str]]]:
    """Every agency's stored rows, in its file's column order (one export)."""
    rows: dict[int, list[list[str]]] = {}
    for row in exported_rows(db):
        rows.setdefault(int(row[0]), []).append(row[1:])
    return rows


def file_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text(encoding="utf-8").splitlines() if line]


def assert_files_stored_once_in_order(db: Path, files: list[Path]) -> dict[int, list[list[str]]]:
    """Every row of agency N's file (files[N-1]) is stored once, in file order, and no other
    row of that agency; returns what is stored."""
    stored = rows_by_agency(db)
    for agency, path in enumerate(files, start=1):
        assert stored.get(agency, []) == file_rows(path), f"agency {agency}"
    return stored


# --- agencies on threads ----------------------------------------------------------------------
class AckTracker:
    """The highest bet each agency had acknowledged, as the client library reports it
    (`on_ack`) from the agencies' threads. Hold `lock` to keep it still."""

    def __init__(self, agencies) -> None:
        self.acked = dict.fromkeys(agencies, 0)
        self.lock = threading.Lock()

    def on_ack(self, agency: int):
        def record(first: int, count: int, latency: float) -> None:
            with self.lock:
                self.acked[agency] = max(self.acked[agency], first + count - 1)
        return record

    def total(self) -> int:
        with self.lock:
            return sum(self.acked.values())

    def least(self) -> int:
        with self.lock:
            return min(self.acked.values())


class AgencyRuns:
    """One `Agency` a file, each on its own thread of the test's process, started at once.

    `per_agency[n]` adds settings for agency n to the shared `config`; `acks` hears
    every ACK. `results` and `errors` fill in as agencies end.
    """

    def __init__(self, port: int, files: dict[int, Path], acks: AckTracker | None = None,
                 per_agency: dict[int, dict] | None = None, **config) -> None:
        self.results: dict = {}
        self.errors: dict[int, BaseException] = {}

        def one(agency: int, path: Path) -> None:
            settings = AgencyConfig(agency=agency, host="127.0.0.1", port=port,
                                    **{**config, **(per_agency or {}).get(agency, {})})
            try:
                self.results[agency] = Agency.from_file(
                    settings, BetFile(path), on_ack=acks.on_ack(agency) if acks else None
                ).run()
            except BaseException as error:  # reported in the test's thread
                self.errors[agency] = error

        self.threads = [threading.Thread(target=one, args=item, daemon=True) for item in files.items()]
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 300) -> dict:
        """Every agency's result; fails on the first agency that failed or did not end."""
        for thread in self.threads:
            thread.join(timeout)
        if self.errors:
            raise AssertionError(f"agencies failed: {self.errors}")
        assert not any(thread.is_alive() for thread in self.threads), "agencies still running"
        return self.results


def run_agencies(port: int, files: dict[int, Path], **config) -> dict:
    """Runs one Agency per file concurrently (threads, in the test process); agency -> result."""
    return AgencyRuns(port, files, **config).join()


# --- the service's loop and connection, turned by the test ---------------------------------------
class FakeLoop:
    """The loop as the lottery service sees it: callbacks and timers wait in `ready`
    until the test runs them (`run_ready`); time moves only to a timer's due time, when
    that timer runs, so a backoff ends when the test turns past it."""

    def __init__(self) -> None:
        self.ready = []
        self.now = 0.0

    def call_soon(self, callback, *args) -> None:
        self.ready.append((None, callback, args))

    def call_later(self, delay, callback, *args) -> None:
        self.call_at(self.now + delay, callback, *args)

    def call_at(self, when, callback, *args) -> None:
        self.ready.append((when, callback, args))

    def time(self) -> float:
        return self.now

    @staticmethod
    def isolate(owner, callback, *args):
        return callback(*args)

    def run_ready(self) -> None:
        """Runs what was ready; what those callbacks schedule waits for the next call."""
        ready, self.ready = self.ready, []
        for when, callback, args in ready:
            if when is not None:
                self.now = max(self.now, when)
            callback(*args)


class FakeConnection:
    """A session's transport that decodes what the session writes (`replies()`) and
    records holds and the close; writing after the close is a bug."""

    peer = "test"

    def __init__(self) -> None:
        self.decoder = p.FrameDecoder(p.Role.CLIENT)
        self.held = False
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.decoder.receive_data(data)

    def hold_reading(self) -> None:
        self.held = True

    def release_reading(self) -> None:
        self.held = False

    def close(self) -> None:
        self.closed = True

    def replies(self) -> list:
        """The messages written since the last call."""
        return list(self.decoder.messages())


# --- processes ------------------------------------------------------------------------------
def env_for(**extra: str) -> dict[str, str]:
    """The environment a child `python -m ...` of this repository needs, plus `extra`."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def env_without_make() -> dict[str, str]:
    """This environment less what an outer `make` hands the makes it starts: MAKEFLAGS
    carries its command-line variables, so under `make test VENV=x` a test's own
    `make clean` would remove x."""
    return {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def one_error_line(stderr: str) -> str:
    """The one line a command's mistake ends with (and no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
