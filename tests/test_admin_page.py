"""The status page: the server-side table, its escaping and policy, and a real headless
Chromium that runs its script against an admin session served over loopback."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading

from reactor.admin import AdminSession
from reactor.http import RequestReader
from reactor.status import DrawFigures
from reactor.status_page import CONTENT_SECURITY_POLICY, render_page
from tests.admin_fakes import FakeSource, deliver, sample_status
from tests.browser import DataHooks


def test_the_table_carries_the_hooks_without_javascript():
    hooks = DataHooks(render_page(sample_status()))
    assert hooks.agencies == {
        "1": {"agency": "1", "committed": "1500", "done": "true"},
        "2": {"agency": "2", "committed": "300", "done": "false"},
        "3": {"agency": "3", "committed": "0", "done": "false"},
    }
    assert hooks.draw["data-state"] == "open"


def test_the_page_tells_what_the_draw_waits_for_and_what_it_found():
    waiting = render_page(sample_status())
    assert "Waiting for agencies 2, 3." in waiting
    assert "The scan starts once every agency is done." in waiting
    assert ">sending<" in waiting and ">not connected<" in waiting and ">DONE<" in waiting
    done = render_page(
        sample_status(
            done={1, 2, 3},
            draw=DrawFigures("done", scanned=1800, total=1800, winning_number=7574, winners={1: 2, 3: 1}),
        )
    )
    assert "No agency missing." in done
    assert "1,800 of 1,800 rows scanned" in done
    assert '<strong id="winning-number">7574</strong>' in done
    assert '<strong id="winners">3</strong>' in done
    assert DataHooks(done).draw["data-state"] == "done"


def test_the_stats_document_renders_too():
    document = sample_status(live=None)
    page = render_page(document)
    assert ">not done<" in page and 'id="rate">-<' in page


def test_everything_rendered_is_escaped():
    document = sample_status()
    document["version"] = '<script>alert("x")</script>&'
    document["draw"]["state"] = '"><img src=x>'
    page = render_page(document)
    assert "<script>alert" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert 'data-state="&quot;&gt;&lt;img src=x&gt;"' in page


def test_the_page_is_self_contained_and_its_inline_code_matches_the_policy():
    page = render_page(sample_status())
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # nothing loaded from elsewhere
    assert "http://" not in page and "https://" not in page
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in CONTENT_SECURITY_POLICY


class LoopbackAdmin:
    """The admin session served on 127.0.0.1 by threads of the test process (only the
    central must be single-threaded), one request a connection, as the central does."""

    def __init__(self, source) -> None:
        self.source = source
        self.paths: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: socket.socket) -> None:
        admin = self

        class Transport:
            closed = False

            def write(self, data: bytes) -> None:
                peer.sendall(data)

            def close(self) -> None:
                self.closed = True

        class RecordingSession(AdminSession):
            def message_received(self, request) -> None:
                admin.paths.append(request.path)
                super().message_received(request)

        transport = Transport()
        session = RecordingSession(transport, self.source)
        reader = RequestReader()
        with peer:
            while not transport.closed:
                try:
                    data = peer.recv(65536)
                except OSError:
                    return
                deliver(reader, session, transport, data)
                if not data:
                    break

    def close(self) -> None:
        self._listener.close()


class ChangingSource(FakeSource):
    """Serves one status to the page's server-side render, and a later one to every poll."""

    def __init__(self, first: dict, later: dict) -> None:
        super().__init__(status=first)
        self._later = later
        self._lock = threading.Lock()

    def status(self) -> dict:
        with self._lock:
            served = self._status
            self._status = self._later
            return served


def test_chromium_runs_the_script_and_it_keeps_the_hooks_current(chromium, tmp_path):
    first = sample_status()  # agencies 1 done, 2 sending, 3 silent; the draw open
    later = sample_status(
        committed={1: 1500, 2: 777, 3: 5, 4: 12},
        done={1, 2, 3},
        draw=DrawFigures("done", scanned=2294, total=2294, winning_number=7574, winners={1: 2, 3: 1}),
    )
    server = LoopbackAdmin(ChangingSource(first, later))
    try:
        dom = chromium.dump_dom(server.url, virtual_time_ms=3000)
        assert server.paths[0] == "/" and server.paths.count("/") == 1  # so the changes below came from the script
        assert "/status.json" in server.paths
        hooks = DataHooks(dom)
        assert hooks.agencies == {
            "1": {"agency": "1", "committed": "1500", "done": "true"},
            "2": {"agency": "2", "committed": "777", "done": "true"},
            "3": {"agency": "3", "committed": "5", "done": "true"},
            "4": {"agency": "4", "committed": "12", "done": "false"},  # a row the script made
        }
        assert hooks.draw["data-state"] == "done"
        assert re.search(r'<footer id="updated"[^>]*>Updated ', dom)
        assert '<strong id="winning-number">7574</strong>' in dom
        assert "2,294 of 2,294 rows scanned" in dom

        shot = chromium.screenshot(server.url, tmp_path / "status-page.png", size=(1200, 800))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        server.close()
