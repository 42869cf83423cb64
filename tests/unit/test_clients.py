"""The typed clients' shared machinery over loopback gRPC: deadlines, bounded retries, DNS expansion, prompt conversion.

The servers here are small stand-ins (a reference that is down for its first calls, a generator
that never answers GetInfo): a real model cannot be made to be down or hang on cue.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from rlfleet.clients import GeneratorClient, ReferenceClient, Retry, expand_target, expand_targets, split_target
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.errors import InvalidRequest, NotReady
from rlfleet.generation import PromptInput
from rlfleet.server import GrpcServer
from rlfleet.v1 import generator_pb2_grpc, reference_pb2, reference_pb2_grpc

ONE_ATTEMPT = ClientConfig(max_attempts=1)  # no retries inside a call: the stand-ins count every attempt


class DownThenUp(reference_pb2_grpc.ReferenceServiceServicer):
    """A reference that answers UNAVAILABLE (NotReady) to its first `down_calls` calls, then log-prob -1 per token."""

    def __init__(self, down_calls: int, invalid: bool = False):
        self.down_calls, self.invalid, self.calls = down_calls, invalid, 0

    async def LogProbs(self, request, context):
        self.calls += 1
        if self.invalid:
            raise InvalidRequest("sequences[0].prompt_length", "scripted refusal")
        if self.calls <= self.down_calls:
            raise NotReady("scripted: still loading")
        return reference_pb2.LogProbsResponse(results=[
            reference_pb2.SequenceLogProbs(logprobs=[-1.0] * (len(s.token_ids) - s.prompt_length))
            for s in request.sequences])


class Silent(generator_pb2_grpc.GeneratorServiceServicer):
    """A generator whose GetInfo never answers."""

    async def GetInfo(self, request, context):
        await asyncio.sleep(30)


async def _serve(add, servicer, name: str) -> GrpcServer:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name=name)
    add(servicer, server.grpc)
    await server.start([name])
    return server


def _reference_call(servicer: DownThenUp, retry: Retry | None) -> tuple[object, float]:
    """Runs one LogProbs call of ([5, 6, 7, 8], prompt 2) through a ReferenceClient; (result or error, seconds)."""
    async def run():
        server = await _serve(reference_pb2_grpc.add_ReferenceServiceServicer_to_server, servicer, "ref-stand-in")
        start = time.monotonic()
        try:
            async with ReferenceClient(f"127.0.0.1:{server.port}", ONE_ATTEMPT, timeout=5, retry=retry) as client:
                return await client.logprobs([([5, 6, 7, 8], 2)]), time.monotonic() - start
        except grpc.aio.AioRpcError as err:
            return err, time.monotonic() - start
        finally:
            await server.stop(0)
    return asyncio.run(run())


def test_retry_waits_out_unavailable_then_succeeds():
    servicer = DownThenUp(down_calls=2)
    result, _ = _reference_call(servicer, Retry(backoff_seconds=0.05, max_backoff_seconds=0.05))
    # two completion tokens (4 ids, prompt 2) -> two log-probs of -1; answered on the third attempt
    assert [r.logprobs for r in result] == [[-1.0, -1.0]] and servicer.calls == 3


def test_retry_on_unavailable_is_bounded():
    servicer = DownThenUp(down_calls=10_000)
    error, seconds = _reference_call(servicer, Retry(backoff_seconds=0.1, max_backoff_seconds=0.2,
                                                     give_up_after_seconds=1.0))
    assert isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE
    # attempts at about 0, 0.1, 0.3, 0.5, 0.7, 0.9 s (fewer on a busy machine, never just one); it gives up
    # once the next wait would pass the 1 s bound, i.e. after at least 1 - 0.2 = 0.8 s
    assert 2 <= servicer.calls <= 6
    assert 0.8 <= seconds < 2.5


def test_no_retry_policy_is_one_attempt_and_other_codes_are_never_retried():
    down = DownThenUp(down_calls=1)
    error, _ = _reference_call(down, retry=None)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and down.calls == 1
    refused = DownThenUp(down_calls=0, invalid=True)
    error, _ = _reference_call(refused, Retry(backoff_seconds=0.05))  # would wait for ever on UNAVAILABLE
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.calls == 1
    assert "sequences[0].prompt_length" in error.details()


def test_every_call_has_a_deadline():
    async def run():
        server = await _serve(generator_pb2_grpc.add_GeneratorServiceServicer_to_server, Silent(), "gen-stand-in")
        target = f"127.0.0.1:{server.port}"
        errors = []
        try:
            for config, timeout in ((ClientConfig(timeout_seconds=0.3, max_attempts=1), None),  # the config's
                                    (ONE_ATTEMPT, 0.3)):                                      # the call's own
                async with GeneratorClient(target, config) as client:
                    start = time.monotonic()
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await client.info(timeout=timeout)
                    errors.append((err.value.code(), time.monotonic() - start))
        finally:
            await server.stop(0)
        return errors

    for code, seconds in asyncio.run(run()):
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and seconds < 2.0  # not the stand-in's 30 s


def test_dns_target_expands_to_every_address_and_others_pass_through():
    local = expand_target("dns:///localhost:50051")
    assert local and set(local) <= {"127.0.0.1:50051", "[::1]:50051"}  # each address separately, IPv6 bracketed
    assert expand_target("10.0.0.7:50051") == ["10.0.0.7:50051"]
    assert expand_target("dns:///no-such-host.invalid:1") == []  # no replica up yet: nothing, not an error
    both = expand_targets(["dns:///localhost:50051", "10.0.0.7:50051", "dns:///localhost:50051"])
    assert both == [*local, "10.0.0.7:50051"]  # each address once, in order


def test_targets_are_parsed_one_way():
    assert split_target("dns:///generator:50051") == ("dns", "generator", 50051)
    assert split_target("[::1]:7") == ("", "::1", 7)
    assert split_target("reward:50061") == ("", "reward", 50061)
    for bad in ("generator", "dns:///generator", "host:http", "dns://8.8.8.8/generator:50051", "host:70000"):
        with pytest.raises(ValueError, match="generator|host"):
            split_target(bad)


def test_dataset_prompts_become_generate_prompts_one_way():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse:abc"}]
    assert PromptInput.from_dataset("a", chat).messages == (("system", "be brief"), ("user", "reverse:abc"))
    assert PromptInput.from_dataset("a", chat, chat_template=False).messages == PromptInput.from_dataset(
        "a", chat).messages  # messages stay messages: there is no text form of them to send
    assert PromptInput.from_dataset("b", "reverse:abc") == PromptInput("b", messages=(("user", "reverse:abc"),))
    assert PromptInput.from_dataset("c", "reverse:abc", chat_template=False) == PromptInput("c", text="reverse:abc")
    with pytest.raises(ValueError, match="prompt 'd': message 0"):
        PromptInput.from_dataset("d", [{"content": "no role"}])
