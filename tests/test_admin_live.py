"""The admin listener of the real central process, as an operator and a scraper meet it.

Every test starts `python -m reactor` (tests/harness.py: the admin listener on a free
port) and talks to it over real sockets: the Prometheus parser reads `/metrics` after
a whole lottery and its figures must agree with `python -m reactor stats`; `/readyz`
follows a drain and a full disk; slow, silent and numerous admin peers never get in
the agencies' way; a headless Chromium reads the status page's hooks.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import protocol as p
from datagen import write_dataset
from tests.admin_fakes import parse_response
from tests.browser import DataHooks
from tests.conftest import SHARED_DATASET
from tests.harness import ROOT, Peer, ServerProcess, file_rows, run_agencies, wait_until
from tests.test_admin_metrics import REQUIRED_FAMILIES

E = p.ErrorCode
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LIVE_FIELDS = ("bets_per_second", "connections", "uptime_s")
# Not windows for an event: bounds on a hung central, far above any real run.
HANG_LIMIT_S = 120


# --- talking to the admin listener -------------------------------------------------------------
def exchange(port: int, request: bytes) -> bytes:
    """Sends `request` on a fresh connection and returns every byte until the central closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_LIMIT_S) as sock:
        sock.sendall(request)
        return read_to_eof(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)  # after its answer, a reset is only the close
        if not chunk:
            return bytes(received)
        received += chunk


def request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: central\r\nUser-Agent: test\r\n\r\n".encode()


def get(port: int, path: str, method: str = "GET"):
    """One request, its response parsed strictly (tests/admin_fakes.parse_response)."""
    return parse_response(exchange(port, request(method, path)), method)


def status_json(port: int) -> dict:
    answer = get(port, "/status.json")
    assert answer.status == 200
    return json.loads(answer.body)


def scrape(port: int) -> tuple[str, dict[tuple[str, tuple], float]]:
    """/metrics as text and as {(sample, sorted labels): value}, read by Prometheus's own parser."""
    answer = get(port, "/metrics")
    assert answer.status == 200 and answer.headers["content-type"] == METRICS_CONTENT_TYPE
    text = answer.body.decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def stats(db: Path) -> dict:
    """`python -m reactor stats`, as a user runs it (also while the central serves)."""
    out = subprocess.run([sys.executable, "-m", "reactor", "stats", "--db", str(db)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=HANG_LIMIT_S)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def without_live_fields(document: dict) -> dict:
    document = {key: value for key, value in document.items() if key not in LIVE_FIELDS}
    document["agencies"] = [{k: v for k, v in a.items() if k != "connected"} for a in document["agencies"]]
    return document


def bets_of(path: Path) -> list[p.Bet]:
    return [p.Bet(first, last, document, birthdate, int(number))
            for first, last, document, birthdate, number in file_rows(path)]


def send_bets(peer: Peer, bets: list[p.Bet], first: int, size: int = 100) -> None:
    """Sends bets `first`.. in batches and reads every ACK."""
    batches = [p.Bets(first + start, tuple(bets[start:start + size])) for start in range(0, len(bets), size)]
    peer.send(*batches)
    for batch in batches:
        assert peer.read() == p.Ack(batch.first, batch.count)


# --- /metrics after a whole lottery ---------------------------------------------------------------
@pytest.mark.skipif(not SHARED_DATASET.exists(), reason="../shared/data/dataset.zip is not here")
def test_metrics_after_the_real_data_set_and_the_draw_agree_with_stats(tmp_path):
    with zipfile.ZipFile(SHARED_DATASET) as archive:
        archive.extractall(tmp_path / "data")
    files = {n: tmp_path / "data" / f"agency-{n}.csv" for n in range(1, 6)}
    db = tmp_path / "bets.db"
    with ServerProcess(db) as server:
        results = run_agencies(server.port, files)
        assert [len(results[n].winners) for n in range(1, 6)] == [2, 3, 3, 2, 0]
        text, metrics = scrape(server.admin_port)
        live = status_json(server.admin_port)
        report = stats(db)  # read-only, beside the central that serves the database

    assert report["total_bets"] == 78_697
    assert report["draw"]["state"] == "done" and report["missing"] == []
    # The figures the issue names agree with stats: bets per agency, agencies done, the draw.
    for agency in report["agencies"]:
        assert metrics[("lottery_bets_stored_total", (("agency", str(agency["agency"])),))] == agency["committed"]
    assert sum(value for (name, _), value in metrics.items() if name == "lottery_bets_stored_total") == 78_697
    assert metrics[("lottery_agencies_done", ())] == sum(agency["done"] for agency in report["agencies"]) == 5
    assert metrics[("lottery_agencies_expected", ())] == report["expected"] == 5
    assert metrics[("lottery_draw_state", ())] == 2  # done
    # A clean run: every batch acknowledged, no ERROR sent, no agency refused.
    assert metrics[("lottery_batches_total", (("result", "error"),))] == 0
    assert metrics[("lottery_batches_total", (("result", "ack"),))] >= 78_697 / 150
    assert all(value == 0 for (name, _), value in metrics.items() if name == "lottery_errors_sent_total")
    assert metrics[("lottery_connections_accepted_total", ())] >= 5
    assert metrics[("lottery_bytes_received_total", ())] > 78_697 * 30  # every bet crossed the wire
    assert metrics[("lottery_commit_duration_seconds_count", ())] > 0
    assert metrics[("lottery_loop_turn_duration_seconds_count", ())] > 0
    assert metrics[("lottery_build_info", (("version", report["version"]),))] == 1

    # Every family the issue lists, each with HELP and TYPE.
    declared = {family.name: family for family in text_string_to_metric_families(text)}
    for name, kind in REQUIRED_FAMILIES.items():
        assert declared[name].type == kind and declared[name].documentation, name
        exposed = name + "_total" if kind == "counter" else name  # the parser drops a counter's _total
        assert f"# HELP {exposed} " in text and f"# TYPE {exposed} {kind}\n" in text, name

    # One document: /status.json is stats plus the live fields.
    assert without_live_fields(live) == report
    assert [agency["winners"] for agency in report["agencies"]] == [2, 3, 3, 2, 0]


# --- /readyz ---------------------------------------------------------------------------------------
def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int]:
    """(send queue, receive queue) in bytes of this machine's TCP socket from `local_port`
    to `remote_port` (Linux's /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
            send, receive = queues.split(":")
            return int(send, 16), int(receive, 16)
    return 0, 0


def errors_sent(admin_port: int, code: p.ErrorCode) -> float:
    return scrape(admin_port)[1][("lottery_errors_sent_total", (("code", code.name),))]


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_readyz_is_503_with_one_line_while_the_central_drains(tmp_path):
    server = ServerProcess(tmp_path / "bets.db", "--agencies", "2", "--drain-timeout", "60")
    with server:
        assert get(server.admin_port, "/readyz").body == b"ready\n"
        probe = Peer(server.port)  # how long a NOT_DONE frame is
        probe.hello(2)
        not_done = len(p.encode(probe.send(p.WinnersQuery()).read()))
        probe.close()

        # The drain ends once every agency connection is gone. This one holds it open: it
        # asks and asks (NOT_DONE each time) and never reads, until the central holds
        # answers the kernel would not take. Then the drain's SHUTTING_DOWN cannot leave,
        # and the connection waits out its linger before the central aborts it.
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        holder.connect(("127.0.0.1", server.port))
        holder.sendall(p.encode(p.Hello(agency=1)))
        flood = p.encode(p.WinnersQuery()) * 100_000

        def ask_and_never_read() -> None:
            try:
                holder.sendall(flood)
            except OSError:
                pass  # the central aborted the connection at the end of its drain

        threading.Thread(target=ask_and_never_read, daemon=True).start()
        ports = server.port, holder.getsockname()[1]

        def central_holds_answers() -> bool:
            # Answers made by now (the probe's aside), then the bytes the kernel has taken
            # by a moment later: more made than taken means the central holds some itself.
            made = (errors_sent(server.admin_port, E.NOT_DONE) - 1) * not_done
            taken = tcp_queues(*ports)[0] + tcp_queues(*reversed(ports))[1]
            return made > taken

        assert wait_until(central_holds_answers, HANG_LIMIT_S)

        # Requests whose last byte is sent once the drain has begun: the answers are decided then.
        pending = {}
        for path in ("/readyz", "/livez"):
            pending[path] = socket.create_connection(("127.0.0.1", server.admin_port), timeout=HANG_LIMIT_S)
            pending[path].sendall(request("GET", path)[:-1])
        server.signal(signal.SIGTERM)
        assert server.wait_for_line("shutdown", "in_progress", HANG_LIMIT_S)
        answers = {}
        for path, sock in pending.items():
            sock.sendall(b"\n")
            answers[path] = read_to_eof(sock)
            sock.close()
        assert server.wait(HANG_LIMIT_S) == 0
        holder.close()

    readyz = parse_response(answers["/readyz"])
    assert readyz.status == 503
    assert readyz.body == b"not ready: draining: the central is shutting down\n"
    livez = parse_response(answers["/livez"])
    assert (livez.status, livez.body) == (200, b"ok\n")  # the loop still turns while it drains
    closed = server.log_lines("connection_closed")
    assert len(closed) == 1 and "agency: 1" in closed[0] and "reason: send did not drain before close" in closed[0]


def test_readyz_is_503_after_a_failed_write_and_200_after_a_good_commit(tmp_path):
    flag = tmp_path / "disk-full"  # tests/faulty_reactor.py: while it exists, SQLite's disk is full
    server = ServerProcess(tmp_path / "bets.db", "--agencies", "1", module="tests.faulty_reactor",
                           env={"FAULT_FLAG": str(flag)})
    bet = p.Bet("Ana", "Gómez", "12345678", "1990-01-01", 1)
    batch = tuple(bet._replace(document=str(10**7 + i)) for i in range(150))
    with server:
        peer = Peer(server.port)
        peer.hello(1)
        peer.send(p.Bets(1, batch))
        assert peer.read() == p.Ack(1, 150)
        assert get(server.admin_port, "/readyz").status == 200

        flag.touch()
        peer.send(p.Bets(151, batch))
        refused = peer.read()
        assert (refused.code, refused.first) == (E.STORAGE_FAILED, 151)
        not_ready = get(server.admin_port, "/readyz")
        assert not_ready.status == 503
        assert not_ready.body.startswith(b"not ready: ") and not_ready.body.count(b"\n") == 1
        assert b"store" in not_ready.body
        assert get(server.admin_port, "/livez").status == 200  # alive, only not ready

        flag.unlink()  # space returns: the resent batch is committed
        peer.send(p.Bets(151, batch))
        assert peer.read() == p.Ack(151, 150)
        ready = get(server.admin_port, "/readyz")
        assert (ready.status, ready.body) == (200, b"ready\n")


# --- hostile and numerous admin peers ---------------------------------------------------------------
def test_a_slowloris_on_the_admin_port_is_cut_by_its_deadline(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--handshake-timeout", "1", "--frame-timeout", "1") as server:
        slow = socket.create_connection(("127.0.0.1", server.admin_port), timeout=HANG_LIMIT_S)
        drip = request("GET", "/status.json")[:-2] + b"X-Drip: " + b"a" * 4000  # never a whole head
        received = b""
        give_up = time.monotonic() + HANG_LIMIT_S
        slow.settimeout(0.2)
        for byte in drip:  # a byte at a time, each well within any deadline on its own
            try:
                slow.send(bytes([byte]))
                received = slow.recv(65536)
            except TimeoutError:
                assert time.monotonic() < give_up, "the slow request was never cut"
                continue
            except OSError:
                break  # cut without an answer would fail below
            break
        slow.settimeout(HANG_LIMIT_S)
        answer = parse_response(received + read_to_eof(slow))
        slow.close()
        assert answer.status == 408
        assert answer.body.startswith(b"the request did not arrive in time")

        # Meanwhile the central served everyone else.
        assert get(server.admin_port, "/livez").status == 200
        peer = Peer(server.port)
        assert peer.hello(1) == p.Welcome(committed=0)
        peer.close()


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_a_thousand_admin_connections_neither_stop_nor_starve_ingest(tmp_path):
    """1,000 admin peers, silent or sending half a request, open from before the agencies
    start and on while they ingest (those the admin pool keeps stay open to the end)."""
    admin_peers, flooders = 1000, 4
    raise_fd_limit(admin_peers + 512)
    dataset = write_dataset(tmp_path / "data", total=50_000, agencies=5)
    # Room for the five agencies and some more: an admin peer that took an agency's
    # place would show as a refused or evicted agency, or as a second session.
    with ServerProcess(tmp_path / "bets.db", "--max-connections", "40") as server:
        opened: list[socket.socket] = []

        def flood(count: int) -> None:
            for number in range(count):
                sock = socket.socket()
                sock.settimeout(HANG_LIMIT_S)
                try:
                    sock.connect(("127.0.0.1", server.admin_port))
                    if number % 2:  # slow: half a request, never the rest; the others say nothing
                        sock.sendall(request("GET", "/status.json")[:20])
                except OSError:
                    pass  # evicted (reset) to make room for a newer one: it was opened all the same
                opened.append(sock)

        flooding = [threading.Thread(target=flood, args=(admin_peers // flooders,)) for _ in range(flooders)]
        for thread in flooding:
            thread.start()
        try:
            assert wait_until(lambda: len(opened) >= 100, HANG_LIMIT_S)  # the agencies start into the flood
            results = run_agencies(server.port, dict(enumerate(dataset.files, start=1)), max_amount=10, window=2)
            for thread in flooding:
                thread.join(HANG_LIMIT_S * 5)
            assert len(opened) == admin_peers
            _, metrics = scrape(server.admin_port)  # and the admin side still answers
        finally:
            for thread in flooding:
                thread.join(HANG_LIMIT_S * 5)
            for sock in opened:
                sock.close()

    assert {agency: result.winners for agency, result in results.items()} == dataset.winners
    assert {agency: result.sessions for agency, result in results.items()} == dict.fromkeys(range(1, 6), 1)
    assert metrics[("lottery_connections_refused_total", (("reason", "busy"),))] == 0
    assert metrics[("lottery_connections_refused_total", (("reason", "evicted"),))] == 0
    assert metrics[("lottery_connections_accepted_total", ())] == 5  # the admin peers are not agencies
    assert sum(server.stored_counts()) == 50_000
    assert all(" | result: fail" not in line for line in server.lines)


# --- every answer well formed over the real socket ------------------------------------------------------
ROUTES = {
    "/livez": "text/plain; charset=utf-8",
    "/readyz": "text/plain; charset=utf-8",
    "/metrics": METRICS_CONTENT_TYPE,
    "/status.json": "application/json",
    "/": "text/html; charset=utf-8",
}
REFUSED = [
    (b"GET /nope HTTP/1.1\r\nHost: c\r\n\r\n", 404),
    (b"GET /metrics/ HTTP/1.1\r\nHost: c\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE / HTTP/1.1\r\nHost: c\r\n\r\n", 405),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: c\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: c\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: c\r\nX-Big: " + b"a" * 9000, 431),  # decided before the head ends
]


def test_every_answer_is_well_formed_over_the_real_socket(tmp_path):
    with ServerProcess(tmp_path / "bets.db") as server:
        port = server.admin_port
        for path, content_type in ROUTES.items():
            got = get(port, path)
            assert got.status == 200 and got.headers["content-type"] == content_type, path
            assert got.headers["date"].endswith(" GMT")
            head = get(port, path, "HEAD")
            assert head.status == 200 and head.body == b"", path
            # HEAD has the headers GET has; the figures (and so the length) of a live page may move.
            assert head.headers.keys() == got.headers.keys(), path
            if path in ("/livez", "/readyz"):
                assert head.headers["content-length"] == got.headers["content-length"]
        assert "Content-Security-Policy" in exchange(port, request("GET", "/")).decode("latin-1")
        for raw, status in REFUSED:
            answer = parse_response(exchange(port, raw))
            assert answer.status == status, raw[:40]
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
            assert answer.body.endswith(b"\n") and answer.body.count(b"\n") == 1
            if status == 405:
                assert answer.headers["allow"] == "GET, HEAD"
        peer = Peer(server.port)  # and the agencies were never in question
        assert peer.hello(1) == p.Welcome(committed=0)
        peer.close()
    assert all("Traceback" not in line for line in server.lines)


# --- a real browser ----------------------------------------------------------------------------------
def check_page_against_stats(chromium, url: str, report: dict) -> DataHooks:
    """Loads the page in Chromium (its script polls status.json) and checks the hooks against `report`."""
    hooks = DataHooks(chromium.dump_dom(url, virtual_time_ms=2500))
    assert hooks.agencies == {
        str(agency["agency"]): {
            "agency": str(agency["agency"]),
            "committed": str(agency["committed"]),
            "done": "true" if agency["done"] else "false",
        }
        for agency in report["agencies"]
    }
    assert hooks.draw["data-state"] == report["draw"]["state"]
    return hooks


def test_a_real_browser_reads_the_page_during_a_run_and_after_the_draw(chromium, tmp_path):
    dataset = write_dataset(tmp_path / "data", total=6000, agencies=5)
    db = tmp_path / "bets.db"
    # Agencies 4 and 5 sit idle while the browser looks: far from any idle deadline.
    with ServerProcess(db, "--idle-timeout", "3600") as server:
        url = f"http://127.0.0.1:{server.admin_port}/"
        # Agencies 1 to 3 run the real client: they send everything, then wait for the draw.
        clients: dict = {}
        running = threading.Thread(target=lambda: clients.update(run_agencies(
            server.port, {n: dataset.files[n - 1] for n in (1, 2, 3)}, max_amount=50)))
        running.start()
        # Agencies 4 and 5 stop half way, so the run is caught in a state that holds still.
        halves = {}
        for agency in (4, 5):
            bets = bets_of(dataset.files[agency - 1])
            peer = Peer(server.port)
            peer.hello(agency)
            send_bets(peer, bets[: len(bets) // 2], first=1)
            halves[agency] = (peer, bets)
        assert wait_until(lambda: status_json(server.admin_port)["missing"] == [4, 5], HANG_LIMIT_S)

        during = stats(db)
        assert during["draw"]["state"] == "open" and during["total_bets"] < 6000
        hooks = check_page_against_stats(chromium, url, during)
        assert hooks.agencies["4"]["committed"] == str(len(halves[4][1]) // 2)
        chromium.screenshot(url, tmp_path / "status-page-during.png", size=(1200, 900))

        for peer, bets in halves.values():
            half = len(bets) // 2
            send_bets(peer, bets[half:], first=half + 1)
            peer.send(p.Done(), p.WinnersQuery())
            assert peer.read() == p.DoneAck()
        for agency, (peer, _) in halves.items():  # each query was held until the last DONE
            winners = []
            while True:
                frame = peer.read()
                winners += frame.documents
                if frame.final:
                    break
            assert winners == dataset.winners[agency]
            peer.close()
        running.join(HANG_LIMIT_S)
        assert {n: clients[n].winners for n in (1, 2, 3)} == {n: dataset.winners[n] for n in (1, 2, 3)}

        after = stats(db)
        assert after["draw"]["state"] == "done" and after["total_bets"] == 6000
        check_page_against_stats(chromium, url, after)
        dom = chromium.dump_dom(url, virtual_time_ms=2500)
        assert f'<strong id="winning-number">{after["draw"]["winning_number"]}</strong>' in dom
        assert f'<strong id="winners">{after["draw"]["winners"]:,}</strong>' in dom
        assert "No agency missing." in dom
        shot = chromium.screenshot(url, tmp_path / "status-page-after.png", size=(1200, 900))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
