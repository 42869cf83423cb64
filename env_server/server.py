"""Wires the environment service into rlfleet's GrpcServer: start (NOT_SERVING) -> SERVING -> drain."""

from __future__ import annotations

import logging

from env_server.core import EnvironmentCore
from env_server.servicer import EnvironmentServicer
from rlfleet.config import ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import environment_pb2_grpc

log = logging.getLogger(__name__)
SERVICE = "rlfleet.v1.EnvironmentService"


async def start_server(config: ServerConfig, core: EnvironmentCore) -> GrpcServer:
    """Serves `core` (whose workers must already run) and returns once health says SERVING."""
    server = GrpcServer(config, name="env")
    server.add_servicer(environment_pb2_grpc.add_EnvironmentServiceServicer_to_server, EnvironmentServicer(core))
    await server.start([SERVICE])
    log.info("environments %s (script_version %s)", ", ".join(
        f"{name} [{', '.join(t.name for t in env.tools)}]" for name, env in core.environments.items()), core.version)
    await server.set_ready()
    return server


async def serve(config: ServerConfig, core: EnvironmentCore) -> None:
    """Runs until SIGTERM/SIGINT, then drains in-flight calls."""
    server = await start_server(config, core)
    await server.wait_for_termination()
