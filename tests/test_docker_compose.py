"""The Docker Compose scenario: `make docker-compose-up`, then the logs graders grep.

Marked `docker` (run with `make test-docker`); skipped when no Docker engine answers.
It replaces the `lottery` compose project's containers and its database volume.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from datagen import write_dataset
from tests.harness import ROOT

pytestmark = pytest.mark.docker


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=check)


@pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers (bash ../shared/tools/docker-engine.sh)")
def test_compose_runs_the_course_scenario():
    dataset = write_dataset(ROOT / ".data")
    compose("down", "-v", "--remove-orphans", check=False)
    try:
        up = subprocess.run(["make", "docker-compose-up"], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = compose("ps", "-a", "--format", "{{.Name}} {{.State}} {{.ExitCode}}").stdout.split("\n")
            clients = [line.split() for line in states if line.startswith("client")]
            if len(clients) == 5 and all(state == "exited" for _, state, _ in clients):
                break
            time.sleep(2)
        assert sorted(clients) == [[f"client{n}", "exited", "0"] for n in range(1, 6)]
        logs = compose("logs", "--no-color").stdout
        assert len(re.findall(r"action: sorteo \| result: success", logs)) == 1
        stored = sum(int(n) for n in re.findall(r"apuesta_recibida \| result: success \| cantidad: (\d+)", logs))
        assert stored == sum(dataset.rows)
        for n in range(1, 6):
            line = re.search(rf"client{n}\s*\|.*action: consulta_ganadores \| result: success \| cant_ganadores: (\d+)", logs)
            assert line and int(line.group(1)) == len(dataset.winners[n])
        assert "result: fail" not in logs
        down = subprocess.run(["make", "docker-compose-down"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0
    finally:
        compose("down", "-v", "--remove-orphans", check=False)
