"""Checks a service's gRPC health: `rlfleet health HOST:PORT [--service NAME] [--tls-ca FILE]` exits 0 only when SERVING.

Used as the container health check (Docker HEALTHCHECK, Kubernetes exec probe) and by `rlfleet up`.
A server with TLS on needs `--tls-ca` (the CA that signed its certificate) and, when the target is
an address the certificate does not name (`127.0.0.1` inside a container), `--tls-server-name`.
Both default to the environment (RLFLEET_HEALTH_TLS_CA, RLFLEET_HEALTH_TLS_SERVER_NAME), so an
image's HEALTHCHECK line needs no change when a deployment turns TLS on.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def health_status(target: str, service: str = "", timeout: float = 3.0, tls_ca: Path | None = None,
                  tls_server_name: str | None = None) -> str:
    """"SERVING", another health status name, or "CODE: details" when the call failed (TLS errors included)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca is not None:
        options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca.read_bytes()), options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def check(target: str, service: str = "", timeout: float = 3.0, tls_ca: Path | None = None,
          tls_server_name: str | None = None) -> bool:
    """True when `target` answers SERVING for `service` ("" = the whole server) within `timeout` seconds."""
    return health_status(target, service, timeout, tls_ca, tls_server_name) == "SERVING"


def main(argv: list[str] | None = None) -> int:
    from rlfleet.config import ConfigError, check_file

    parser = argparse.ArgumentParser(prog="rlfleet health", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="HOST:PORT (or dns:///NAME:PORT) of the gRPC service")
    parser.add_argument("--service", default="", help="service name to ask about; empty asks about the server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    parser.add_argument("--tls-ca", type=Path, default=os.environ.get("RLFLEET_HEALTH_TLS_CA") or None,
                        help="PEM CA certificate(s) to verify the server with; speaks TLS when set "
                             "(default: $RLFLEET_HEALTH_TLS_CA)")
    parser.add_argument("--tls-server-name", default=os.environ.get("RLFLEET_HEALTH_TLS_SERVER_NAME") or None,
                        help="name the server's certificate must carry, when the target is an address it does not "
                             "name (default: $RLFLEET_HEALTH_TLS_SERVER_NAME)")
    args = parser.parse_args(argv)
    if args.tls_ca is not None:
        check_file(args.tls_ca, "--tls-ca", "CA certificate file")
    elif args.tls_server_name:
        raise ConfigError("--tls-server-name: only used with TLS; set --tls-ca too")
    status = health_status(args.target, args.service, args.timeout, args.tls_ca, args.tls_server_name)
    print("SERVING" if status == "SERVING" else "NOT_SERVING")
    if status not in ("SERVING", "NOT_SERVING"):
        print(status, file=sys.stderr)
    return 0 if status == "SERVING" else 1
