"""Test harness: the real server as a subprocess, a raw protocol peer, and agency runs."""

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
from pathlib import Path

import protocol as p
from client import Agency, AgencyConfig, BetFile

ROOT = Path(__file__).resolve().parents[1]
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
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **self.env}
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
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

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
            message = self.decoder.next_message()
            if message is p.PEER_CLOSED:
                return None
            if message is not p.NEED_DATA:
                return message
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.decoder.receive_data(data)

    def closed(self, timeout: float | None = None) -> bool:
        return self.read(timeout) is None

    def close(self) -> None:
        self.sock.close()


def raw_frame(frame_type: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">IB", len(payload) + 1 if length is None else length, frame_type) + payload


def run_agencies(port: int, files: dict[int, Path], **config) -> dict:
    """Runs one Agency per file concurrently (threads, in the test process); agency -> result."""
    results, errors = {}, {}

    def one(agency: int, path: Path) -> None:
        try:
            results[agency] = Agency.from_file(
                AgencyConfig(agency=agency, host="127.0.0.1", port=port, **config), BetFile(path)
            ).run()
        except BaseException as error:  # reported below, in the test's thread
            errors[agency] = error

    threads = [threading.Thread(target=one, args=item) for item in files.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise AssertionError(f"agencies failed: {errors}")
    return results


def exported_rows(db: Path) -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "reactor", "export", "--db", str(db), "--csv", "-"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
    ).stdout
    return [line.split(",") for line in out.splitlines()]


def file_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text(encoding="utf-8").splitlines() if line]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
