"""Wires the reward service into rlfleet's GrpcServer: start (NOT_SERVING) -> load the model -> SERVING -> drain."""

from __future__ import annotations

import asyncio
import logging

from reward_server import sandbox
from reward_server.core import RewardCore
from reward_server.servicer import RewardServicer
from rlfleet.config import ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import reward_pb2_grpc

log = logging.getLogger(__name__)
SERVICE = "rlfleet.v1.RewardService"


async def start_server(config: ServerConfig, core: RewardCore) -> GrpcServer:
    """Serves `core` (whose workers must already run) and returns once health says SERVING."""
    server = GrpcServer(config, name="reward")
    server.add_servicer(reward_pb2_grpc.add_RewardServiceServicer_to_server, RewardServicer(core),
                        raw_requests=RewardServicer.RAW_REQUESTS)
    await server.start([SERVICE])
    await asyncio.to_thread(core.load_model)
    log.info("rewards %s (script_version %s); code sandbox: %s",
             ", ".join(f"{s.name}:{s.weight:g}" for s in core.specs), core.version,
             await asyncio.to_thread(sandbox.describe))
    await server.set_ready()
    return server


async def serve(config: ServerConfig, core: RewardCore) -> None:
    """Runs until SIGTERM/SIGINT, then drains in-flight calls."""
    server = await start_server(config, core)
    await server.wait_for_termination()
