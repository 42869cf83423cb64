"""Reward server holes over real loopback gRPC: deep JSON columns, a request bigger than the queue, a reused request
id, scoring past its deadline.

Requests go through a raw stub where a test sends what rlfleet's own client never would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from learner.pipeline.config import RewardServiceConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.scoring import GroupScorer
from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.server import start_server
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.outcomes import FinishReason, RewardStatus
from rlfleet.rollouts import Group, Sample
from rlfleet.v1 import reward_pb2, reward_pb2_grpc

# `order` counts the items this (single) worker has scored so far: an answer served from the dedupe
# cache repeats the first answer's values, one scored afresh gets new ones. (A log file would not do:
# workers may run as another user, who cannot write to pytest's folders.)
SCRIPT = """
import time

SEEN = []

def length(prompt, completion, **columns):
    return float(len(completion))

def order(prompt, completion, **columns):
    SEEN.append(completion)
    return float(len(SEEN))

def slow(prompt, completion, **columns):
    time.sleep(float(completion))
    return 1.0
"""


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "length.py"
    script.write_text(SCRIPT)
    return script


async def _serve(script: Path, **overrides):
    overrides = {"reward": ["length"], **overrides}
    config = RewardConfig(script=script, workers=1, server=ServerConfig(host="127.0.0.1", port=0), **overrides)
    core = RewardCore(config)
    core.start_workers()
    return await start_server(config.server, core), core


def _items(*completions: str, **columns: str) -> list[reward_pb2.RewardItem]:
    return [reward_pb2.RewardItem(prompt="p", completion=c, columns=columns) for c in completions]


async def _call(stub, request: reward_pb2.ScoreRequest):
    """The reply's rewards, or (code, details) of the error."""
    try:
        reply = await stub.Score(request, timeout=30)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return [r.reward for r in reply.results]


def test_deeply_nested_json_column_is_invalid_argument_naming_it(tmp_path):
    script = _script(tmp_path)
    columns = {
        "deep_list": "[" * 100_000 + "]" * 100_000,  # json.loads raised RecursionError here (INTERNAL)
        "just_past": "[" * 65 + "]" * 65,  # 65 nested lists: parses, one level past the limit
        "deep_object": '{"a":' * 65 + "1" + "}" * 65,  # 65 nested objects
        "at_limit": "[" * 64 + "]" * 64,  # 64 levels: allowed
        "wide": "[" + ",".join(["[1]"] * 500) + "]",  # 501 brackets, only 2 levels deep: allowed
    }

    async def run():
        server, core = await _serve(script)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            got = {name: await _call(stub, reward_pb2.ScoreRequest(items=[
                *_items("ok"), *_items("abc", **{name: text})])) for name, text in columns.items()}
        await server.stop(0)
        core.close()
        return got

    got = asyncio.run(run())
    for name in ("deep_list", "just_past", "deep_object"):
        assert got[name] == (grpc.StatusCode.INVALID_ARGUMENT,
                             f'items[1].columns["{name}"]: JSON nests deeper than 64 levels of lists/objects'), name
    assert got["at_limit"] == got["wide"] == [2.0, 3.0]  # len("ok"), len("abc"): the server kept serving


def test_request_larger_than_the_whole_queue_is_invalid_argument_naming_the_limit(tmp_path):
    script = _script(tmp_path)

    async def run():
        server, core = await _serve(script, max_queued_items=4)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            too_big = await _call(stub, reward_pb2.ScoreRequest(items=_items("a", "b", "c", "d", "e")))
            fits = await _call(stub, reward_pb2.ScoreRequest(items=_items("a", "bb", "ccc", "dddd")))
        await server.stop(0)
        core.close()
        return too_big, fits

    too_big, fits = asyncio.run(run())
    assert too_big == (grpc.StatusCode.INVALID_ARGUMENT, "items: 5 items in one request, more than the whole queue "
                                                         "holds (max_queued_items = 4); split the request")
    assert fits == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("concurrent", [False, True])
def test_reused_request_id_with_other_items_is_scored_afresh(tmp_path, concurrent):
    script = _script(tmp_path)

    async def run():
        server, core = await _serve(script, reward=["order"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            first = reward_pb2.ScoreRequest(request_id="r-1", items=_items("a", "bb"))
            other = reward_pb2.ScoreRequest(request_id="r-1", items=_items("cccc"))
            if concurrent:  # the second arrives while the first still runs
                got = await asyncio.gather(_call(stub, first), _call(stub, other))
            else:
                got = [await _call(stub, first), await _call(stub, other)]
            retry = await _call(stub, first)  # a true retry: same id, same items
            fresh = await _call(stub, reward_pb2.ScoreRequest(request_id="r-2", items=_items("d")))
        await server.stop(0)
        core.close()
        return got, retry, fresh

    (first, other), retry, fresh = asyncio.run(run())
    # 3 items scored in all: `other` got its own place in the order (not the old [1, 2] answer)...
    assert sorted(first + other) == [1.0, 2.0, 3.0]
    assert len(first) == 2 and len(other) == 1
    assert retry == first  # ...the retry was answered from the cache...
    assert fresh == [4.0]  # ...so the next new item is the 4th the worker scores


def _group(*completions: str) -> Group:
    samples = [Sample(token_ids=[1], logprobs=[0.0], finish_reason=FinishReason.STOP, text=c) for c in completions]
    return Group(prompt_id="g", prompt_ids=[1], samples=samples, policy_version=0)


def test_scoring_past_its_deadline_ends_as_timeout_not_an_endless_retry(tmp_path):
    script = _script(tmp_path)

    async def run():
        # Items may take 30 s on the server; the pipeline's Score deadline (reward_timeout_seconds) is 1 s.
        server, core = await _serve(script, reward=["slow"], item_timeout_seconds=30)
        scorer = GroupScorer([RewardServiceConfig(address=f"127.0.0.1:{server.port}", name="slow")],
                             ClientConfig(max_attempts=1), timeout=1.0, backoff=0.1)
        start = time.perf_counter()
        late = _group("5", "5")
        [late_errors] = await scorer.score([(late, PromptRow("g", "p"))])
        late_seconds = time.perf_counter() - start
        fast = _group("0")
        [fast_errors] = await scorer.score([(fast, PromptRow("g", "p"))])  # the service kept serving
        await scorer.close()
        await server.stop(0)
        core.close()
        return late, late_errors, late_seconds, fast, fast_errors

    late, late_errors, late_seconds, fast, fast_errors = asyncio.run(run())
    assert [(s.reward_status, s.reward) for s in late.samples] == [(RewardStatus.TIMEOUT, 0.0)] * 2
    assert late_errors == ["slow: no answer within 1 s (reward_timeout_seconds)"] * 2
    assert late_seconds < 2.0  # one 1 s attempt; a retry would have taken another second at least
    assert [(s.reward_status, s.reward) for s in fast.samples] == [(RewardStatus.OK, 1.0)] and fast_errors == []
