"""Shared gRPC bootstrap over real loopback: health, auth, error mapping, /metrics, graceful drain."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rlfleet.clients import make_channel
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.errors import InvalidRequest
from rlfleet.server import GrpcServer
from rlfleet.v1 import reference_pb2, reference_pb2_grpc


class EchoReference(reference_pb2_grpc.ReferenceServiceServicer):
    """A test servicer: log-prob 0 per completion token, a slow path to test draining."""

    def __init__(self):
        self.started = asyncio.Event()

    async def LogProbs(self, request, context):
        if not request.sequences:
            raise InvalidRequest("sequences", "must hold at least one sequence")
        if request.return_entropy:  # the slow path
            self.started.set()
            await asyncio.sleep(0.5)
        return reference_pb2.LogProbsResponse(results=[
            reference_pb2.SequenceLogProbs(logprobs=[0.0] * (len(s.token_ids) - s.prompt_length))
            for s in request.sequences])


async def _start(**server_kwargs) -> tuple[GrpcServer, EchoReference]:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0, metrics_port=0, **server_kwargs), name="echo")
    servicer = EchoReference()
    reference_pb2_grpc.add_ReferenceServiceServicer_to_server(servicer, server.grpc)
    await server.start(["rlfleet.v1.ReferenceService"])
    return server, servicer


def _seq(n: int = 3) -> reference_pb2.LogProbsRequest:
    return reference_pb2.LogProbsRequest(sequences=[reference_pb2.TokenSequence(token_ids=[1] * n, prompt_length=1)])


def test_health_flips_from_not_serving_to_serving():
    async def run():
        server, _ = await _start()
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = await health.Check(health_pb2.HealthCheckRequest(service="rlfleet.v1.ReferenceService"))
            await server.set_ready()
            after = await health.Check(health_pb2.HealthCheckRequest(service=""))
        await server.stop(0)
        return before.status, after.status

    before, after = asyncio.run(run())
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert after == health_pb2.HealthCheckResponse.SERVING


def test_invalid_request_maps_to_invalid_argument_naming_the_field():
    async def run():
        server, _ = await _start()
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reference_pb2_grpc.ReferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.LogProbs(reference_pb2.LogProbsRequest())
            ok = await stub.LogProbs(_seq(4))
        await server.stop(0)
        return err.value, ok

    err, ok = asyncio.run(run())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("sequences:")
    assert list(ok.results[0].logprobs) == [0.0, 0.0, 0.0]


def test_auth_token_required_except_for_health():
    async def run():
        server, _ = await _start(auth_token="s3cret")
        target = f"127.0.0.1:{server.port}"
        codes = {}
        for name, token in (("missing", None), ("wrong", "nope"), ("right", "s3cret")):
            async with make_channel(target, ClientConfig(auth_token=token, max_attempts=1)) as channel:
                try:
                    await reference_pb2_grpc.ReferenceServiceStub(channel).LogProbs(_seq())
                    codes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    codes[name] = err.code()
        async with make_channel(target) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        await server.stop(0)
        return codes, health

    codes, health = asyncio.run(run())
    assert codes == {"missing": grpc.StatusCode.UNAUTHENTICATED, "wrong": grpc.StatusCode.UNAUTHENTICATED,
                     "right": grpc.StatusCode.OK}
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_metrics_endpoint_parses_and_counts_calls():
    async def run():
        server, _ = await _start()
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reference_pb2_grpc.ReferenceServiceStub(channel)
            await stub.LogProbs(_seq())
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.LogProbs(reference_pb2.LogProbsRequest())
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode())
        await server.stop(0)
        return text

    families = {f.name: f for f in text_string_to_metric_families(asyncio.run(run()))}
    samples = {(s.labels.get("method"), s.labels.get("code")): s.value
               for s in families["rlfleet_grpc_requests"].samples
               if s.name == "rlfleet_grpc_requests_total" and s.labels.get("service") == "echo"}
    assert samples[("LogProbs", "OK")] >= 1
    assert samples[("LogProbs", "INVALID_ARGUMENT")] >= 1
    assert "rlfleet_grpc_request_duration_seconds" in families


def test_graceful_stop_drains_in_flight_calls():
    async def run():
        server, servicer = await _start(grace_seconds=5)
        await server.set_ready()
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reference_pb2_grpc.ReferenceServiceStub(channel)
            slow = asyncio.ensure_future(stub.LogProbs(
                reference_pb2.LogProbsRequest(sequences=_seq().sequences, return_entropy=True)))
            await servicer.started.wait()
            stopping = asyncio.ensure_future(server.stop())
            result = await slow
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as after:
                await stub.LogProbs(_seq(), timeout=1)
        return result, after.value.code()

    result, code_after = asyncio.run(run())
    assert len(result.results[0].logprobs) == 2  # the in-flight call finished normally
    assert code_after in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
