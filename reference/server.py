"""Wires the reference service into rlfleet's GrpcServer: start (NOT_SERVING) -> load the model -> SERVING."""

from __future__ import annotations

import asyncio
import logging

from reference.config import ReferenceConfig
from reference.core import ReferenceScorer
from reference.model import ReferenceModel, load_reference_model
from reference.servicer import ReferenceServicer
from rlfleet.server import GrpcServer
from rlfleet.v1 import reference_pb2, reference_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "rlfleet.v1.ReferenceService"


def reference_info(config: ReferenceConfig, model: ReferenceModel) -> reference_pb2.ReferenceInfo:
    """GetInfo's answer; base_model_id is the same fingerprint generators report for the same folder."""
    from rlfleet.adapters.identity import base_model_id

    return reference_pb2.ReferenceInfo(
        model=config.model, base_model_id=base_model_id(config.model), vocab_size=model.vocab_size,
        max_model_len=model.max_model_len, dtype=str(model.dtype).removeprefix("torch."),
        max_batch_tokens=config.max_batch_tokens)


async def start_reference_server(config: ReferenceConfig, model: ReferenceModel | None = None) -> GrpcServer:
    """Starts listening at once, loads the model (unless given) off the event loop, then reports SERVING."""
    server = GrpcServer(config.server, name="reference")
    servicer = ReferenceServicer()
    server.add_servicer(reference_pb2_grpc.add_ReferenceServiceServicer_to_server, servicer)
    await server.start([SERVICE_NAME])
    if model is None:
        model = await asyncio.to_thread(load_reference_model, config)
    if model.max_model_len > config.max_batch_tokens:
        log.warning("max_batch_tokens %d < max_model_len %d: the longest sequences run alone, over budget",
                    config.max_batch_tokens, model.max_model_len)
    scorer = ReferenceScorer(model, config.max_batch_tokens, config.max_concurrent_batches)
    info = await asyncio.to_thread(reference_info, config, model)
    servicer.scorer, servicer.info = scorer, info
    await server.set_ready()
    return server


async def serve(config: ReferenceConfig) -> None:
    """Runs the service until SIGTERM/SIGINT, then drains in-flight calls."""
    server = await start_reference_server(config)
    await server.wait_for_termination()
