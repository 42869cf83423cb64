"""Wires the generator into rlfleet's gRPC server: start NOT_SERVING, load model and policy, SERVING, drain."""

from __future__ import annotations

import logging

from generator.config import GeneratorConfig
from generator.core import Generator
from generator.learner_sync import pull_current_policy
from generator.servicer import GeneratorServicer
from rlfleet.malloc import keep_freed_buffers
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


async def serve(config: GeneratorConfig) -> None:
    """Runs the generator until SIGTERM/SIGINT; health turns SERVING only once the current policy is loaded."""
    keep_freed_buffers()  # LoadAdapter receives 2 MiB messages: reuse their memory instead of faulting it in
    server = GrpcServer(config.server, name="generator")
    servicer = GeneratorServicer()
    # LoadAdapter reads its chunks as bytes: the weights are sliced out without a copy (see rlfleet.adapters).
    server.add_servicer(generator_pb2_grpc.add_GeneratorServiceServicer_to_server, servicer,
                        raw_requests=["LoadAdapter"])
    await server.start([SERVICE_NAME])
    core = await Generator.create(config)
    try:
        if config.learner_address:
            await pull_current_policy(core, config.learner_address, config.learner_client, config.learner_wait_seconds)
        servicer.core = core
        info = core.info()
        log.info("generator serving %s (engine %s, policy v%d) on port %d", info.model, info.engine,
                 info.policy_version, server.port)
        await server.set_ready()
        await server.wait_for_termination()
    finally:
        await server.stop(0)
        core.shutdown()
