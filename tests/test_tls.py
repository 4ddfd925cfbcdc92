"""The course scenario over TLS, with a throwaway certificate made by openssl."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest

import protocol as p
from client import Agency, AgencyConfig, AgencyFailed
from datagen import write_dataset
from tests.harness import Peer, ServerProcess, run_agencies

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def make_certificate(directory):
    """A throwaway self-signed certificate for localhost and 127.0.0.1: (cert, key) paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_course_scenario_over_tls(tmp_path, certificate):
    cert, key = certificate
    dataset = write_dataset(tmp_path / "data", total=20_000, agencies=5)
    with ServerProcess(tmp_path / "bets.db", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        # a peer that does not speak TLS only costs its own connection
        plain = Peer(server.port, timeout=3)
        plain.send(p.Hello(1))
        assert plain.closed()
        results = run_agencies(server.port, dict(enumerate(dataset.files, start=1)), tls=True, tls_ca=str(cert))
        assert {a: r.winners for a, r in results.items()} == dataset.winners
    assert len(server.log_lines("sorteo", "success")) == 1


def test_a_client_that_cannot_verify_the_server_refuses_it(tmp_path, certificate):
    cert, key = certificate
    with ServerProcess(tmp_path / "bets.db", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        config = AgencyConfig(agency=1, host="127.0.0.1", port=server.port, tls=True, retries=0)
        with pytest.raises(AgencyFailed, match="TLS"):
            Agency(config, lambda skip: iter(())).run()
        # and the server still serves a verified client
        context = ssl.create_default_context(cafile=str(cert))
        with context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1") as s:
            s.sendall(p.encode(p.Hello(1)))
            decoder = p.FrameDecoder(p.Role.CLIENT)
            decoder.receive_data(s.recv(100))
            assert decoder.next_message() == p.Welcome(committed=0)
