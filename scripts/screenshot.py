"""`make screenshot`: the status page of a real run, as headless Chromium shows it.

Runs the central and five agencies on this machine as `make demo` does (generated
data, a fresh database, a free port for each listener, `python -m client` per
agency), and photographs `http://127.0.0.1:ADMIN/` twice:

- docs/status-page-running.png: agencies 1 to 3 are done and wait for the draw,
  4 and 5 have not started, so the draw waits for them;
- docs/status-page.png: every agency done, the draw done, the winners counted.

Then it stops the central (SIGTERM: it drains). Needs Chromium (Debian's `chromium`,
or LOTTERY_CHROMIUM=path); exit 0 when both pictures are written, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from demo import (  # noqa: E402
    ADMIN_PORT_LINE,
    PORT_LINE,
    Interrupted,
    _interrupt,
    own_environment,
    spawn,
    start_central,
    stop,
)

from datagen import COURSE_SIZES, write_dataset  # noqa: E402
from tests.browser import Chromium, find_chromium  # noqa: E402

WINDOW = (1100, 680)
START_LIMIT_S = 30  # a central that has not listened by then will not


def main() -> int:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".data", help="directory of agency-N.csv (default .data)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the pictures go (default docs/)")
    args = parser.parse_args()
    browser = find_chromium()
    if browser is None:
        print("screenshot: no Chromium found: install Debian's `chromium` or set LOTTERY_CHROMIUM", file=sys.stderr)
        return 1
    processes: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            return run(args, Chromium(browser, Path(profile)), processes)
    except Interrupted as interrupted:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short
        print(f"\nscreenshot interrupted ({interrupted}): the central and the agencies are stopped", file=sys.stderr)
        return 128 + interrupted.signum
    finally:
        stop(processes)  # the central drains; agencies still running close


def run(args: argparse.Namespace, chromium: Chromium, processes: list[subprocess.Popen]) -> int:
    dataset = write_dataset(args.data, total=sum(COURSE_SIZES), agencies=len(COURSE_SIZES))
    env = own_environment()
    server, server_log, _, client_ini, _ = start_central(processes, args.data, "screenshot", len(dataset.files), env)
    ports = wait_for_ports(server, server_log)
    if ports is None:
        print(f"screenshot: the central did not start; see {server_log}", file=sys.stderr)
        return 1
    port, admin = ports
    page = f"http://127.0.0.1:{admin}/"

    def agencies(numbers) -> list[subprocess.Popen]:
        return [spawn(processes, [sys.executable, "-m", "client", "--config", str(client_ini), "--agency", str(n),
                                  "--server", f"127.0.0.1:{port}", "--data", str(dataset.files[n - 1])],
                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                for n in numbers]

    first = agencies((1, 2, 3))  # they send everything, then wait for the draw
    while status(admin)["missing"] != [4, 5]:
        if any(proc.poll() not in (None, 0) for proc in first):
            print("screenshot: an agency failed", file=sys.stderr)
            return 1
        time.sleep(0.1)
    args.out.mkdir(parents=True, exist_ok=True)
    running = chromium.screenshot(page, args.out / "status-page-running.png", size=WINDOW)
    print(f"wrote {running.relative_to(ROOT) if running.is_relative_to(ROOT) else running} (agencies 4 and 5 "
          "not started)")

    rest = agencies((4, 5))
    codes = [proc.wait() for proc in first + rest]
    if codes != [0] * 5 or status(admin)["draw"]["state"] != "done":
        print(f"screenshot: the agencies exited {codes}; see {server_log}", file=sys.stderr)
        return 1
    done = chromium.screenshot(page, args.out / "status-page.png", size=WINDOW)
    print(f"wrote {done.relative_to(ROOT) if done.is_relative_to(ROOT) else done} (after the draw)")
    server.send_signal(signal.SIGTERM)
    return 0 if server.wait(30) == 0 else 1


def wait_for_ports(server: subprocess.Popen, log: Path) -> tuple[int, int] | None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline and server.poll() is None:
        text = log.read_text()
        port, admin = PORT_LINE.search(text), ADMIN_PORT_LINE.search(text)
        if port and admin:
            return int(port.group(1)), int(admin.group(1))
        time.sleep(0.05)
    return None


def status(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status.json", timeout=30) as answer:
        return json.load(answer)


if __name__ == "__main__":
    sys.exit(main())
