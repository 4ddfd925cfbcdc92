"""The load generator: agencies spread over worker processes, speaking the protocol.

Each worker is a process that keeps its prepared frames between runs: it encodes
its agencies' bets into BETS frames once (`prepare`), with the client's own codec
and packer, so a run only sends bytes and reads ACKs. In a run every agency is a
thread with one connection: HELLO, batches pipelined `window` deep, DONE, and
WINNERS_QUERY up to the final frame (or, with `finish=False`, a close after the
last ACK: the server then holds the bets of agencies that are not done). Each
ACK's latency (send to ACK) is recorded.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from dataclasses import dataclass, field

import protocol as p
from datagen import generate_bets


@dataclass
class AgencyLoad:
    agency: int
    bets: int
    seed: int = 7574


@dataclass
class RunResult:
    bets: int = 0
    winners: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _prepare(loads: list[AgencyLoad], max_amount: int) -> dict[int, list[tuple[bytes, int, int]]]:
    frames = {}
    for load in loads:
        first, agency_frames = 1, []
        for batch in p.pack_batches(generate_bets(load.agency, load.bets, load.seed), max_amount):
            agency_frames.append((p.encode(p.Bets(first, tuple(batch))), first, len(batch)))
            first += len(batch)
        frames[load.agency] = agency_frames
    return frames


def _run_agency(port: int, agency: int, frames, window: int, finish: bool, result: RunResult,
                lock: threading.Lock) -> None:
    latencies, acked, winners = [], 0, 0
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = p.FrameDecoder(p.Role.CLIENT)

        def read():
            while (message := decoder.next_message()) is p.NEED_DATA:
                decoder.receive_data(sock.recv(65536))
            if isinstance(message, p.Error) or message is p.PEER_CLOSED:
                raise RuntimeError(f"agency {agency}: {message}")
            return message

        sock.sendall(p.encode(p.Hello(agency)))
        start = read().committed
        sent_at = []
        pending = [f for f in frames if f[1] + f[2] - 1 > start]
        index = 0
        while index < len(pending) or sent_at:
            burst = []
            while index < len(pending) and len(sent_at) < window:
                burst.append(pending[index][0])
                sent_at.append(time.perf_counter())
                index += 1
            if burst:
                sock.sendall(b"".join(burst))
            ack = read()
            latencies.append(time.perf_counter() - sent_at.pop(0))
            acked += ack.count
        if finish:
            sock.sendall(p.encode(p.Done()))
            read()
            sock.sendall(p.encode(p.WinnersQuery()))
            while True:
                message = read()
                winners += len(message.documents)
                if message.final:
                    break
        sock.close()
    except Exception as error:  # reported in the result, counted as a failed run
        with lock:
            result.errors.append(f"agency {agency}: {error!r}")
    with lock:
        result.bets += acked
        result.winners += winners
        result.latencies.extend(latencies)


def _worker(pipe) -> None:
    frames = {}
    while True:
        command, *args = pipe.recv()
        if command == "prepare":
            loads, max_amount = args
            frames = _prepare(loads, max_amount)
            pipe.send("ready")
        elif command == "run":
            port, window, finish = args
            result, lock = RunResult(), threading.Lock()
            threads = [
                threading.Thread(target=_run_agency, args=(port, agency, agency_frames, window, finish, result, lock))
                for agency, agency_frames in frames.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            pipe.send(result)
        else:
            return


class LoadGenerator:
    """Owns the worker processes; `prepare` once per workload, then `run` against any server."""

    def __init__(self, processes: int = 2) -> None:
        context = multiprocessing.get_context("fork")
        self._pipes, self._procs = [], []
        for _ in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        """The worker processes (their CPU time is the load generator's)."""
        return [proc.pid for proc in self._procs]

    def prepare(self, loads: list[AgencyLoad], max_amount: int) -> None:
        for index, pipe in enumerate(self._pipes):
            pipe.send(("prepare", loads[index :: len(self._pipes)], max_amount))
        for pipe in self._pipes:
            assert pipe.recv() == "ready"

    def run(self, port: int, window: int, finish: bool = True) -> tuple[RunResult, float]:
        started = time.perf_counter()
        for pipe in self._pipes:
            pipe.send(("run", port, window, finish))
        total = RunResult()
        for pipe in self._pipes:
            part = pipe.recv()
            total.bets += part.bets
            total.winners += part.winners
            total.latencies.extend(part.latencies)
            total.errors.extend(part.errors)
        return total, time.perf_counter() - started

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send(("stop",))
        for proc in self._procs:
            proc.join(5)
