"""HTTPS: the gateway serves TLS with the certificate and key named in serve_config.yaml's
``http_options`` (Ray Serve's own options), here a self-signed certificate made by the test.

Serve's HTTP options are fixed when Serve starts, so this runs its own small Ray instance
in a child process, on other ports, and stops it at the end.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.integration

_CHILD = """
import sys, yaml, ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

config = yaml.safe_load(open(sys.argv[1]))
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
serve.start(http_options=config["http_options"])
_get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
print("deployed", flush=True)
sys.stdin.read()  # until the test closes our stdin
serve.shutdown()
ray.shutdown()
"""


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modellane test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gateway.crt", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def https_gateway(
    registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(directory)
    port = _free_port()
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {
        "host": "127.0.0.1",
        "port": port,
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    (control,) = config["applications"]
    control["args"].update({"mlflow_tracking_uri": registry, "models": {}})
    config_path = directory / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its Ray processes are ours to stop, by this group id
        cwd=REPO,
        # Ray 2.60's HAProxy ingress has no TLS settings (docs/security.md#tls): TLS inside
        # Serve runs with Ray's request-path options off.
        env={**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
    )
    try:
        yield f"https://127.0.0.1:{port}", cert
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=30)


def test_gateway_serves_https_with_the_configured_certificate(
    https_gateway: tuple[str, Path],
) -> None:
    url, cert = https_gateway
    with httpx.Client(base_url=url, verify=str(cert), timeout=10) as client:
        resp = wait_for(
            lambda: (r := client.get("/healthz")).status_code == 200 and r,
            300,
            "the gateway to answer over HTTPS",
            every_s=1,
        )
        assert resp.json()["status"] == "ok"
        assert resp.http_version in ("HTTP/1.1", "HTTP/2")
        # the same auth rules over TLS
        assert client.get("/admin/events").status_code == 401
    # a client that does not trust the certificate refuses the connection
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=10)
    # and plain HTTP on that port gets no answer it could use
    plain = url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=10).raise_for_status()
