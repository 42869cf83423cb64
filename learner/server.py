"""Learner server wiring: LearnerService on GrpcServer, the training loop beside it, SIGTERM -> checkpoint -> exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.loop import LearnerState, TrainingLoop, follow, make_source
from learner.push import AdapterPusher
from learner.queue_source import QueueSource
from learner.servicer import LearnerServicer
from learner.trainer import Trainer
from rlfleet.server import GrpcServer
from rlfleet.v1 import learner_pb2_grpc

log = logging.getLogger(__name__)
SERVICE = "rlfleet.v1.LearnerService"


def progress_logger(max_steps: int):
    """One INFO line per training step: the progress a container log (`docker compose logs learner`) shows."""
    def log_step(record: dict) -> None:
        log.info("step %d/%d  reward %.3f  kl %.5f  len %.1f  stale %d  %.2fs/step", record["step"], max_steps,
                 record.get("reward_mean", float("nan")), record.get("kl", 0.0),
                 record.get("response_length_mean", 0.0), int(record.get("staleness_max", 0)),
                 record.get("step_seconds", 0.0))
    return log_step


class LearnerServer:
    """Serves LearnerService while the loop trains; `run` returns when training ends or on SIGTERM."""

    def __init__(self, config: LearnerConfig):
        self.config = config
        self.grpc = GrpcServer(config.server, name="learner")
        self.pusher = AdapterPusher(config.generators, config.push, config.client)
        self.loop: TrainingLoop | None = None

    async def start(self) -> int:
        """Binds the port (health NOT_SERVING), builds the engine in a worker thread, then SERVING."""
        source = make_source(self.config)
        status = LearnerState()
        queue = source if isinstance(source, QueueSource) else None
        servicer = LearnerServicer(status, self.pusher, queue, self.config.push.chunk_bytes)
        port = await self.grpc.start([SERVICE])
        # Registered after start: gRPC warns and serves these through its generic handler, which is
        # the path the end-to-end tests exercise. Calls get UNAVAILABLE until `set_ready` below.
        self.grpc.add_servicer(learner_pb2_grpc.add_LearnerServiceServicer_to_server, servicer)
        engine = await asyncio.to_thread(PolicyEngine, self.config)
        trainer = Trainer(self.config, engine)
        self.loop = TrainingLoop(self.config, trainer, source, self.pusher, status=status,
                                 on_step=[progress_logger(self.config.max_steps)])
        await self.grpc.set_ready()
        return port

    async def run(self) -> int:
        """Trains until max_steps (exit 0) or SIGTERM/SIGINT (checkpoint, exit 0); a failure exits 1."""
        assert self.loop is not None, "call start() first"
        events = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            events.add_signal_handler(sig, self.loop.request_stop)
        try:
            state = await self.loop.run()
            log.info("training %s at step %d (policy version %d)", state.state, state.step, state.policy_version)
            return 0
        except Exception:
            log.exception("training failed")
            return 1
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                events.remove_signal_handler(sig)
            await self.pusher.close()
            await self.grpc.stop()


async def serve(config: LearnerConfig) -> int:
    """Rank 0 serves and drives the loop; other ranks (the `deepspeed` launcher) follow it."""
    if int(os.environ.get("RANK", "0")) != 0:
        trainer = Trainer(config, await asyncio.to_thread(PolicyEngine, config))
        await asyncio.to_thread(follow, trainer, config)
        return 0
    server = LearnerServer(config)
    await server.start()
    return await server.run()
