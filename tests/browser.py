"""Headless Chromium for tests that look at a page as a browser does.

`find_chromium()` looks for Debian's `chromium` (or `LOTTERY_CHROMIUM`, a path);
the `chromium` fixture in conftest.py skips a test with a clear reason when there
is none. `Chromium.dump_dom()` loads a page, lets its scripts run for a budget of
*virtual* time (Chromium pauses that clock while a fetch is pending, so the
outcome does not depend on this machine's speed), and returns the DOM as HTML.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Not a window for an event: a bound on a hung browser, far above any real run.
HANG_LIMIT_S = 300


def find_chromium() -> str | None:
    explicit = os.environ.get("LOTTERY_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium executable and a throwaway profile directory."""

    def __init__(self, path: str, profile: Path) -> None:
        self.path = path
        self.profile = profile

    def _run(self, url: str, *extra: str, virtual_time_ms: int) -> subprocess.CompletedProcess:
        command = [
            self.path,
            "--headless",
            "--no-sandbox",  # tests run as root in CI, where the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={self.profile}",
            f"--virtual-time-budget={virtual_time_ms}",
            *extra,
            url,
        ]
        result = subprocess.run(command, capture_output=True, timeout=HANG_LIMIT_S, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise AssertionError(f"chromium exited {result.returncode}: {result.stderr.decode(errors='replace')[-2000:]}")
        return result

    def dump_dom(self, url: str, virtual_time_ms: int = 3000) -> str:
        """The page's DOM after `virtual_time_ms` of its (virtual) time."""
        return self._run(url, "--dump-dom", virtual_time_ms=virtual_time_ms).stdout.decode()

    def screenshot(self, url: str, path: Path, size: tuple[int, int] = (1200, 900), virtual_time_ms: int = 3000) -> Path:
        """Saves a PNG of the page as it looks after `virtual_time_ms`."""
        self._run(
            url, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars",
            virtual_time_ms=virtual_time_ms,
        )
        return path


class DataHooks(HTMLParser):
    """Collects the status page's hooks from HTML: every element with `data-agency`
    (as {agency: its data-* attributes}) and the element with `id="draw"`."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.agencies: dict[str, dict[str, str]] = {}
        self.draw: dict[str, str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if "data-agency" in attributes:
            self.agencies[attributes["data-agency"]] = {
                name[5:]: value for name, value in attributes.items() if name.startswith("data-")
            }
        if attributes.get("id") == "draw":
            self.draw = attributes
