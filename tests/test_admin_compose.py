"""The admin listener in the compose files, without Docker: what generate-compose.sh
writes for N agencies, and that the committed docker-compose.yml is its output for 5.
(tests/test_docker_compose.py runs them against a real engine.)"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.harness import ROOT


def generate(tmp_path, agencies: int) -> str:
    out = tmp_path / f"compose-{agencies}.yml"
    made = subprocess.run([str(ROOT / "generate-compose.sh"), out.name, str(agencies)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return out.read_text()


def server_service(compose: str) -> str:
    return compose[compose.index("  server:\n"):compose.index("  client1:\n")]


@pytest.mark.parametrize("agencies", [1, 5, 12])
def test_the_status_page_is_published_on_the_hosts_loopback_only(tmp_path, agencies):
    server = server_service(generate(tmp_path, agencies))
    assert re.findall(r'^      - "([^"]*)"', server, re.M) == ["127.0.0.1:12346:12346"]  # the one published port
    assert "      SERVER_ADMIN_HOST: 0.0.0.0\n" in server  # inside the container, so it can be published
    assert '      SERVER_ADMIN_PORT: "12346"\n' in server  # the port the image's healthcheck asks
    assert f'      SERVER_AGENCIES: "{agencies}"\n' in server


def test_the_committed_compose_file_is_the_scripts_output_for_five_agencies(tmp_path):
    generated = generate(tmp_path, 5).replace("compose-5.yml", "docker-compose.yml", 1)
    assert (ROOT / "docker-compose.yml").read_text() == generated


def test_the_images_healthcheck_asks_readyz_on_the_admin_port():
    dockerfile = (ROOT / "Dockerfile").read_text()
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK"):].split("\n\n")[0]
    assert "/readyz" in healthcheck and "SERVER_ADMIN_PORT" in healthcheck and "12346" in healthcheck
    assert "create_connection" not in healthcheck  # not a bare connect, which the central counts as a silent agency
