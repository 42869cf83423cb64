"""The pipeline's generator pool over real gRPC: no replica gets Generate calls before its health check says SERVING.

A replica resolved while its model still loads (a `docker compose --scale` or Kubernetes scale-up
that DNS re-resolution finds) used to get work at once: `acquire` probed only replicas that had
failed before. The generators are the scripted stand-ins of test_pipeline.py, registered without
the readiness gate, so a call that reached an unready one would be answered and counted.
"""

from __future__ import annotations

import asyncio

from learner.pipeline.generators import GeneratorPool
from reward_server.server import start_server
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2_grpc
from tests.service.test_pipeline import ScriptedGenerator, _pipeline, _reward_core

BACKOFF = 0.2   # test_pipeline._pipeline's retry_backoff_seconds too


async def _generator(servicer: ScriptedGenerator, ready: bool) -> GrpcServer:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0, grace_seconds=0), name="scripted-generator")
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server.grpc)
    await server.start(["rlfleet.v1.GeneratorService"])   # health NOT_SERVING until set_ready
    if ready:
        await server.set_ready()
    return server


def test_acquire_skips_a_replica_until_its_probe_says_serving():
    async def run():
        ready, loading = await _generator(ScriptedGenerator(), True), await _generator(ScriptedGenerator(), False)
        a, b = f"127.0.0.1:{ready.port}", f"127.0.0.1:{loading.port}"
        pool = GeneratorPool([a, b], ClientConfig(timeout_seconds=5, max_attempts=1), backoff_seconds=BACKOFF)
        seen = {}
        held = await pool.acquire()                      # both idle: the first, which is ready
        # the other one is idle (least loaded) but NOT_SERVING: the busy ready one gets the work
        seen["while_loading"] = [(await pool.acquire()).address for _ in range(3)]
        await loading.set_ready()
        await asyncio.sleep(BACKOFF + 0.05)              # its failed probe benched it for the back-off
        joined = await pool.acquire()
        seen["once_serving"] = joined.address
        pool.release(joined, failed=True)                # a failed call: probed again before more work
        await loading.set_not_ready()
        await asyncio.sleep(BACKOFF + 0.05)
        seen["after_failure"] = [(await pool.acquire()).address for _ in range(3)]
        await loading.set_ready()
        await asyncio.sleep(BACKOFF + 0.05)
        seen["recovered"] = (await pool.acquire()).address
        pool.release(held)
        await pool.close()
        await ready.stop(0)
        await loading.stop(0)
        return a, b, seen

    a, b, seen = asyncio.run(run())
    assert seen == {"while_loading": [a, a, a], "once_serving": b, "after_failure": [a, a, a], "recovered": b}


def test_a_replica_that_joins_mid_run_gets_no_prompt_before_it_serves(tmp_path):
    core = _reward_core()

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        first, joining = ScriptedGenerator(), ScriptedGenerator()
        servers = [await _generator(first, True), await _generator(joining, False)]
        source = _pipeline(tmp_path, [f"127.0.0.1:{servers[0].port}"], reward.port, max_staleness=0)
        await source.start()
        source.set_policy_version(0)
        await asyncio.wait_for(source.next_batch(), 30)
        # a scale-up: re-resolution finds a second replica, still loading its model
        source.pool.targets.append(f"127.0.0.1:{servers[1].port}")
        await source.pool.refresh(force=True)
        for version in (1, 2):
            source.set_policy_version(version)
            first.policy_version = joining.policy_version = version
            await asyncio.wait_for(source.next_batch(), 30)
        calls_while_loading = joining.calls
        await servers[1].set_ready()
        await asyncio.sleep(BACKOFF + 0.05)
        for version in (3, 4):
            source.set_policy_version(version)
            first.policy_version = joining.policy_version = version
            await asyncio.wait_for(source.next_batch(), 30)
        await source.close()
        for server in [*servers, reward]:
            await server.stop(0)
        return calls_while_loading, joining.calls, source.stats

    try:
        calls_while_loading, calls_after, stats = asyncio.run(run())
    finally:
        core.close()
    # 4 prompts per batch, 2 per request: 2 calls a batch, the second on the idle replica once it serves
    assert calls_while_loading == 0 and calls_after >= 1
    assert stats.generator_failures == 0 and stats.trained == 20
