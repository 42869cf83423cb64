"""TLS end to end over loopback with a self-signed certificate for `localhost`: `rlfleet health` and dns:/// targets."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from rlfleet.cli import run_command
from rlfleet.config import ServerConfig, TlsConfig
from rlfleet.server import GrpcServer


def _write_cert(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate naming only DNS:`name` (no IP address), and its key."""
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                        "-keyout", str(key_file), "-out", str(cert_file)], check=True, capture_output=True)
        return cert_file, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def localhost_cert(tmp_path_factory) -> tuple[Path, Path]:
    return _write_cert(tmp_path_factory.mktemp("tls"), "localhost")


async def _tls_server(cert_file: Path, key_file: Path, **kwargs) -> GrpcServer:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0, tls=TlsConfig(cert_file=cert_file, key_file=key_file),
                                     **kwargs), name="tls")
    await server.start([])
    await server.set_ready()
    return server


def test_rlfleet_health_speaks_tls(localhost_cert, capsys):
    cert_file, key_file = localhost_cert

    async def run():
        server = await _tls_server(cert_file, key_file)
        target = f"127.0.0.1:{server.port}"
        results = {}
        for name, argv in (("plaintext", [target]),
                           ("ca, address not in the certificate", [target, "--tls-ca", str(cert_file)]),
                           ("ca and server name", [target, "--tls-ca", str(cert_file), "--tls-server-name", "localhost"]),
                           ("dns target", [f"dns:///localhost:{server.port}", "--tls-ca", str(cert_file)])):
            code = await asyncio.to_thread(run_command, "health", argv)
            results[name] = (code, capsys.readouterr())
        await server.stop(0)
        return results

    results = asyncio.run(run())
    assert {name: code for name, (code, _) in results.items()} == {
        "plaintext": 1, "ca, address not in the certificate": 1, "ca and server name": 0, "dns target": 0}
    assert results["ca and server name"][1].out == "SERVING\n"
    assert results["ca, address not in the certificate"][1].out == "NOT_SERVING\n"
    assert results["ca, address not in the certificate"][1].err.startswith("UNAVAILABLE:")


def test_rlfleet_health_tls_options_from_the_environment_and_a_missing_ca(localhost_cert, tmp_path):
    cert_file, key_file = localhost_cert

    async def run():
        server = await _tls_server(cert_file, key_file)
        env = {"RLFLEET_HEALTH_TLS_CA": str(cert_file), "RLFLEET_HEALTH_TLS_SERVER_NAME": "localhost",
               "PATH": "/usr/bin:/bin"}
        command = [sys.executable, "-m", "rlfleet.cli", "health", f"127.0.0.1:{server.port}"]
        from_env = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True)
        missing = await asyncio.to_thread(subprocess.run, [*command, "--tls-ca", str(tmp_path / "nope.pem")],
                                          capture_output=True, text=True)
        await server.stop(0)
        return from_env, missing

    from_env, missing = asyncio.run(run())
    assert (from_env.returncode, from_env.stdout) == (0, "SERVING\n"), from_env.stderr
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"rlfleet health: error: --tls-ca: CA certificate file {tmp_path / 'nope.pem'} "
                                      "does not exist")
