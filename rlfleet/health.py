"""Checks a service's gRPC health: `rlfleet health HOST:PORT [--service NAME]` exits 0 only when SERVING.

Used as the container health check (Docker HEALTHCHECK, Kubernetes exec probe) and by `rlfleet up`.
"""

from __future__ import annotations

import argparse


def check(target: str, service: str = "", timeout: float = 3.0) -> bool:
    """True when `target` answers SERVING for `service` ("" = the whole server) within `timeout` seconds."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlfleet health", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="HOST:PORT of the gRPC service")
    parser.add_argument("--service", default="", help="service name to ask about; empty asks about the server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    serving = check(args.target, args.service, args.timeout)
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1
