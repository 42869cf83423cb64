"""Cheap endpoints cannot starve real ones, over real loopback gRPC: probe-stream budget, Watch, reflection, /metrics, auth."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rlfleet.config import ServerConfig
from rlfleet.server import GrpcServer, is_loopback
from rlfleet.v1 import reference_pb2, reference_pb2_grpc

TOKEN = (("authorization", "Bearer s3cret"),)


class SlowReference(reference_pb2_grpc.ReferenceServiceServicer):
    """Answers LogProbs after `delay` seconds (0 per completion token), so calls can be held open."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    async def LogProbs(self, request, context):
        await asyncio.sleep(self.delay)
        return reference_pb2.LogProbsResponse(results=[
            reference_pb2.SequenceLogProbs(logprobs=[0.0] * (len(s.token_ids) - s.prompt_length))
            for s in request.sequences])


async def _start(delay: float = 0.0, **server_kwargs) -> GrpcServer:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0, metrics_port=0, **server_kwargs), name="limits")
    server.add_servicer(reference_pb2_grpc.add_ReferenceServiceServicer_to_server, SlowReference(delay))
    await server.start(["rlfleet.v1.ReferenceService"])
    await server.set_ready()
    return server


def _request() -> reference_pb2.LogProbsRequest:
    # 3 tokens, prompt_length 1 -> 2 completion log-probs
    return reference_pb2.LogProbsRequest(sequences=[reference_pb2.TokenSequence(token_ids=[1, 2, 3], prompt_length=1)])


async def _open_watch(channel: grpc.aio.Channel, service: str = "") -> grpc.aio.UnaryStreamCall:
    """A health Watch stream whose first message has arrived (so the server holds it open)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
    await call.read()
    return call


async def _code(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _reflection_code(channel: grpc.aio.Channel, metadata=()) -> grpc.StatusCode:
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_open_probe_streams_do_not_block_calls_or_health_checks():
    async def run():
        # Budgets: 2 application calls, 8 probe streams. The attack: 8 token-less Watch streams held open.
        server = await _start(auth_token="s3cret", reflection=True, max_concurrent_rpcs=2, max_probe_streams=8)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            watches = [await _open_watch(channel) for _ in range(8)]
            ninth_watch = await _code(_open_watch(channel))
            reflection_with_token = await _reflection_code(channel, TOKEN)
            stub = reference_pb2_grpc.ReferenceServiceStub(channel)
            calls = await asyncio.gather(*(stub.LogProbs(_request(), metadata=TOKEN, timeout=5) for _ in range(2)))
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            for call in watches:
                call.cancel()
            await asyncio.sleep(0.2)  # the server sees the cancellations and frees the slots
            after = await _code(_open_watch(channel))
        await server.stop(0)
        return ninth_watch, reflection_with_token, calls, check.status, after

    ninth_watch, reflection_with_token, calls, check, after = asyncio.run(run())
    assert ninth_watch == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reflection_with_token == grpc.StatusCode.RESOURCE_EXHAUSTED  # the same small budget as Watch
    assert [list(c.results[0].logprobs) for c in calls] == [[0.0, 0.0], [0.0, 0.0]]
    assert check == health_pb2.HealthCheckResponse.SERVING
    assert after == grpc.StatusCode.OK  # cancelled streams gave their slots back


def test_application_budget_refuses_with_resource_exhausted_and_health_still_answers():
    async def run():
        server = await _start(delay=1.0, max_concurrent_rpcs=1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reference_pb2_grpc.ReferenceServiceStub(channel)
            first = asyncio.ensure_future(stub.LogProbs(_request(), timeout=5))
            await asyncio.sleep(0.3)  # the first call now holds the only slot
            second = await _code(stub.LogProbs(_request(), timeout=5))
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            await first
            third = await _code(stub.LogProbs(_request(), timeout=5))
        await server.stop(0)
        return second, check.status, third

    second, check, third = asyncio.run(run())
    assert second == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert check == health_pb2.HealthCheckResponse.SERVING
    assert third == grpc.StatusCode.OK


def test_health_watch_streams_every_change():
    async def run():
        server = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name="watch")
        server.add_servicer(reference_pb2_grpc.add_ReferenceServiceServicer_to_server, SlowReference())
        await server.start(["rlfleet.v1.ReferenceService"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="rlfleet.v1.ReferenceService"), timeout=10)
            seen = [(await call.read()).status]
            await server.set_ready()
            seen.append((await call.read()).status)
            await server.set_not_ready()
            seen.append((await call.read()).status)
            call.cancel()
        await server.stop(0)
        return seen

    S = health_pb2.HealthCheckResponse
    assert asyncio.run(run()) == [S.NOT_SERVING, S.SERVING, S.NOT_SERVING]


def test_reflection_is_off_by_default_and_needs_the_token_when_on():
    async def run():
        codes = {}
        for name, kwargs in (("default", {}), ("on", {"reflection": True, "auth_token": "s3cret"})):
            server = await _start(**kwargs)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                codes[name] = await _reflection_code(channel)
                if kwargs:
                    codes["on with token"] = await _reflection_code(channel, TOKEN)
            await server.stop(0)
        return codes

    assert asyncio.run(run()) == {"default": grpc.StatusCode.UNIMPLEMENTED, "on": grpc.StatusCode.UNAUTHENTICATED,
                                  "on with token": grpc.StatusCode.OK}


def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_metrics_endpoint_binds_the_server_host_unless_told_otherwise():
    async def run():
        bound = {}
        for name, kwargs in (("server host", {}), ("metrics_host", {"metrics_host": "0.0.0.0"})):
            server = await _start(**kwargs)
            bound[name] = _listen_addresses(server.metrics_port)
            await server.stop(0)
        return bound

    bound = asyncio.run(run())
    assert bound == {"server host": {"0100007F"},  # 127.0.0.1, little-endian hex
                     "metrics_host": {"00000000"}}


def test_auth_failures_are_counted_and_logged_with_the_peer(caplog):
    def failures(port: int) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "rlfleet_auth_failures_total" and s.labels.get("service") == "limits")

    async def run():
        server = await _start(auth_token="s3cret")
        before = await asyncio.to_thread(failures, server.metrics_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reference_pb2_grpc.ReferenceServiceStub(channel)
            codes = [await _code(stub.LogProbs(_request(), metadata=m)) for m in
                     ((), (("authorization", "Bearer nope"),), TOKEN)]
        after = await asyncio.to_thread(failures, server.metrics_port)
        await server.stop(0)
        return codes, after - before

    with caplog.at_level(logging.WARNING, logger="rlfleet.interceptors"):
        codes, counted = asyncio.run(run())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK]
    assert counted == 2
    # The first refusal is logged; the second falls in the same 10 s window and is only counted.
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1
    assert "ipv4:127.0.0.1:" in lines[0] and "/rlfleet.v1.ReferenceService/LogProbs" in lines[0]


@pytest.mark.parametrize(("host", "tls", "warned"), [
    ("0.0.0.0", False, True), ("10.1.2.3", False, True), ("127.0.0.1", False, False), ("localhost", False, False),
    ("::1", False, False), ("0.0.0.0", True, False)])
def test_a_token_without_tls_off_loopback_is_warned_about(caplog, host, tls, warned):
    assert is_loopback(host) == (host in ("127.0.0.1", "localhost", "::1"))
    files = {"cert_file": "cert.pem", "key_file": "key.pem"} if tls else {}

    async def warn():  # nothing is bound: the check runs on the config alone
        GrpcServer(ServerConfig(host=host, auth_token="s3cret", tls=files), name="plain")._warn_plaintext_token()

    with caplog.at_level(logging.WARNING, logger="rlfleet.server"):
        asyncio.run(warn())
    assert any("plaintext" in r.getMessage() for r in caplog.records) == warned
