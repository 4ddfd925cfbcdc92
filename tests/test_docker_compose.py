"""The Docker Compose scenario: `make docker-compose-up`, the logs graders grep, `make docker-compose-down`.

Marked `docker` (run with `make test-docker`); skipped when no Docker engine answers.
It replaces the `lottery` compose project's containers and its database volume, and
the agency files in .data/, and needs the host's 127.0.0.1:12346 free (the status
page is published there).

The course's grading runs up, reads the logs, runs down, several times in a row: each
`up` must be a new lottery with every course line, so the scenario runs twice. A
container restart in between must keep the database. A deployment made with
`./generate-compose.sh` for 10 agencies must run from `make docker-compose-up` alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from datagen import Dataset, write_dataset
from tests.harness import ROOT, env_without_make

pytestmark = pytest.mark.docker


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


needs_docker = pytest.mark.skipif(not docker_answers(),
                                  reason="no Docker engine answers (bash ../shared/tools/docker-engine.sh)")


def compose(compose_file: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-f", str(compose_file), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=check)


def make(target: str, compose_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", target, f"COMPOSE_FILE={compose_file.name}"], cwd=ROOT, env=env_without_make(),
                          capture_output=True, text=True, timeout=900)


def wait_for_clients(compose_file: Path, agencies: int) -> list[list[str]]:
    """Each client's name, state and exit code once all have exited (or the deadline passed)."""
    deadline = time.monotonic() + 600
    while True:
        states = compose(compose_file, "ps", "-a", "--format", "{{.Name}} {{.State}} {{.ExitCode}}").stdout
        clients = sorted((line.split() for line in states.splitlines() if line.startswith("client")),
                         key=lambda c: int(c[0].removeprefix("client")))
        if len(clients) == agencies and all(state == "exited" for _, state, _ in clients):
            return clients
        if time.monotonic() > deadline:
            return clients
        time.sleep(2)


def stats_in_the_server() -> dict:
    """`python -m reactor stats` inside the server container: it reads the server's own config."""
    out = subprocess.run(["docker", "exec", "server", "python", "-m", "reactor", "stats"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def from_the_host(path: str) -> tuple[int, bytes]:
    """The central's admin listener as compose publishes it: on the host's loopback."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:12346{path}", timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check_the_admin_listener() -> None:
    """Published on 127.0.0.1 only; the healthcheck (/readyz) says healthy; the page's
    status.json is stats plus its live fields."""
    published = subprocess.run(["docker", "port", "server", "12346/tcp"], capture_output=True, text=True,
                               timeout=60).stdout.split()
    assert published == ["127.0.0.1:12346"]
    health = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", "server"], capture_output=True,
                            text=True, timeout=60).stdout.strip()
    assert health == "healthy"
    assert from_the_host("/readyz") == (200, b"ready\n")
    status, body = from_the_host("/status.json")
    live = json.loads(body)
    assert status == 200
    del live["bets_per_second"], live["connections"], live["uptime_s"]
    for agency in live["agencies"]:
        del agency["connected"]
    assert live == stats_in_the_server()


def check_one_lottery(compose_file: Path, dataset: Dataset) -> None:
    """The course's lines of one run: every bet stored once, one sorteo, each agency's winners."""
    agencies = len(dataset.rows)
    clients = wait_for_clients(compose_file, agencies)
    assert clients == [[f"client{n}", "exited", "0"] for n in range(1, agencies + 1)]
    logs = compose(compose_file, "logs", "--no-color").stdout
    assert len(re.findall(r"action: sorteo \| result: success", logs)) == 1
    stored = sum(int(n) for n in re.findall(r"apuesta_recibida \| result: success \| cantidad: (\d+)", logs))
    assert stored == sum(dataset.rows)
    for n in range(1, agencies + 1):
        line = re.search(rf"client{n}\s*\|.*action: consulta_ganadores \| result: success \| cant_ganadores: (\d+)",
                         logs)
        assert line and int(line.group(1)) == len(dataset.winners[n]), n
    assert "result: fail" not in logs
    assert "Traceback" not in logs
    assert stats_in_the_server()["total_bets"] == sum(dataset.rows)
    check_the_admin_listener()


@needs_docker
def test_every_up_is_a_new_lottery_and_a_restart_keeps_it():
    compose_file = ROOT / "docker-compose.yml"
    dataset = write_dataset(ROOT / ".data")
    compose(compose_file, "down", "--volumes", "--remove-orphans", check=False)
    try:
        for run in (1, 2):
            up = make("docker-compose-up", compose_file)
            assert up.returncode == 0, up.stdout + up.stderr
            check_one_lottery(compose_file, dataset)
            if run == 1:
                # A container restart is not a new lottery: the database and the draw are kept.
                subprocess.run(["docker", "restart", "server"], capture_output=True, timeout=120, check=True)
                report = stats_in_the_server()
                assert report["total_bets"] == sum(dataset.rows) and report["draw"]["state"] == "done"
            down = make("docker-compose-down", compose_file)
            assert down.returncode == 0, down.stdout + down.stderr
            volumes = subprocess.run(["docker", "volume", "ls", "--format", "{{.Name}}"], capture_output=True,
                                     text=True, timeout=60).stdout.split()
            assert "lottery_bets" not in volumes  # down ended the lottery
    finally:
        compose(compose_file, "down", "--volumes", "--remove-orphans", check=False)


@needs_docker
def test_a_generated_ten_agency_deployment_runs_from_make_alone(tmp_path):
    compose_file = ROOT / "docker-compose.test-10.yml"
    for old in (ROOT / ".data").glob("agency-*.csv"):  # make must write the files for 10 agencies itself
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    generated = subprocess.run(["./generate-compose.sh", compose_file.name, "10"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    assert generated.returncode == 0, generated.stderr
    expected = write_dataset(tmp_path, agencies=10)  # what `make data AGENCIES=10` writes, byte for byte
    compose(compose_file, "down", "--volumes", "--remove-orphans", check=False)
    try:
        up = make("docker-compose-up", compose_file)
        assert up.returncode == 0, up.stdout + up.stderr
        for n in range(1, 11):
            assert (ROOT / ".data" / f"agency-{n}.csv").read_bytes() == (tmp_path / f"agency-{n}.csv").read_bytes()
        check_one_lottery(compose_file, expected)
        down = make("docker-compose-down", compose_file)
        assert down.returncode == 0, down.stdout + down.stderr
    finally:
        compose(compose_file, "down", "--volumes", "--remove-orphans", check=False)
        compose_file.unlink(missing_ok=True)
        write_dataset(ROOT / ".data")  # the committed compose file's 5 agencies again
