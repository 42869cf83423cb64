"""TLS end to end over loopback with a self-signed certificate for `localhost`: `rlfleet health` and dns:/// targets."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.config import PushSettings
from learner.pipeline.generators import GeneratorPool
from learner.push import AdapterPusher, serialise_adapter
from rlfleet.adapters import AdapterAssembler
from rlfleet.cli import run_command
from rlfleet.clients import GeneratorClient
from rlfleet.config import ClientConfig, ServerConfig, TlsConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2, generator_pb2_grpc


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


class Sink(generator_pb2_grpc.GeneratorServiceServicer):
    """A LoadAdapter endpoint that acknowledges every adapter it receives."""

    async def LoadAdapter(self, request_iterator, context):
        assembler = AdapterAssembler()
        async for chunk in request_iterator:
            assembler.add(chunk)
        return generator_pb2.LoadAdapterResponse(policy_version=assembler.finish().policy_version)


async def _tls_server(cert_file: Path, key_file: Path, **kwargs) -> GrpcServer:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0, tls=TlsConfig(cert_file=cert_file, key_file=key_file),
                                     **kwargs), name="tls")
    server.add_servicer(generator_pb2_grpc.add_GeneratorServiceServicer_to_server, Sink())
    await server.start(["rlfleet.v1.GeneratorService"])
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


def test_replicas_of_a_dns_target_are_verified_against_its_name(localhost_cert):
    """Push and the pipeline reach each replica of dns:///localhost by IP; the certificate names only localhost."""
    cert_file, key_file = localhost_cert
    tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.ones(2, 3)}
    payload = serialise_adapter('{"peft_type": "LORA", "r": 2}', tensors, policy_version=5, base_model_id="abc")
    client = ClientConfig(tls_ca_file=cert_file, max_attempts=1)

    async def run():
        server = await _tls_server(cert_file, key_file)
        address = f"127.0.0.1:{server.port}"
        pusher = AdapterPusher([f"dns:///localhost:{server.port}"], PushSettings(timeout_seconds=5), client)
        pushed = await pusher.push(payload)
        await pusher.close()
        pool = GeneratorPool([f"dns:///localhost:{server.port}"], client)
        await pool.refresh(force=True)
        pool_serving = {a: await e.client.serving() for a, e in pool.endpoints.items()}
        for endpoint in pool.endpoints.values():
            await endpoint.client.close()
        async with GeneratorClient(address, client) as by_address:  # what the replicas got before: no name
            bare_serving = await by_address.serving()
        await server.stop(0)
        return address, pushed, pool_serving, bare_serving

    address, pushed, pool_serving, bare_serving = asyncio.run(run())
    assert [(o.target, o.ok, o.error) for o in pushed] == [(address, True, "")]
    assert pool_serving == {address: True}
    assert bare_serving is False  # the control: by address alone, the certificate check fails
