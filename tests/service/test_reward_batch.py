"""ScoreBatch over real loopback gRPC: columns in, columns out, with the per-item guarantees of Score.

Hand-derived numbers: weights and components of mixed OK / failing items, the same answers from Score
and ScoreBatch, INVALID_ARGUMENT naming the column for bad input, and dedupe per request_id.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import grpc
import pytest

from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.server import start_server
from rlfleet.clients import RewardClient, make_channel
from rlfleet.config import ServerConfig
from rlfleet.outcomes import FinishReason, RewardBatch, RewardItem, RewardStatus
from rlfleet.v1 import common_pb2, reward_pb2, reward_pb2_grpc

OK, ERROR, INVALID = RewardStatus.OK, RewardStatus.ERROR, RewardStatus.INVALID_OUTPUT

SCRIPT = '''
SEEN = []

def accuracy(prompts, completions, answer, **columns):
    """TRL form: 1 when the completion equals the answer."""
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

def shaped(prompt, completion, completion_tokens=0, finish_reason=None, bonus=None, **columns):
    """Per item: None for empty completions, raises on "boom", NaN on "nan", else tokens / 10 + bonus."""
    if not completion:
        return None
    if completion == "boom":
        raise ValueError("boom")
    if completion == "nan":
        return float("nan")
    return completion_tokens / 10 + (bonus or 0.0) - (1.0 if finish_reason == "length" else 0.0)

def order(prompt, completion, **columns):
    """How many items this worker has scored, this one included: a cached answer repeats old values."""
    SEEN.append(completion)
    return float(len(SEEN))
'''


async def _serve(tmp_path: Path, reward: list[str]):
    script = tmp_path / "rewards.py"
    script.write_text(SCRIPT)
    config = RewardConfig(script=script, reward=reward, workers=1,
                          server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0))
    core = RewardCore(config)
    core.start_workers()
    return await start_server(config.server, core), core


def test_mixed_items_weights_components_and_statuses(tmp_path):
    completions = ["four", "", "boom", "nan", "five"]
    batch = RewardBatch(["q"] * 5, completions, {"answer": ["four"] * 5, "bonus": [0.5, None, None, None, 2.0]},
                        completion_tokens=[10, 0, 3, 3, 20],
                        finish_reasons=[FinishReason.STOP, None, None, None, FinishReason.LENGTH])

    async def run():
        server, core = await _serve(tmp_path, ["accuracy:1", "shaped:0.5"])
        async with RewardClient(f"127.0.0.1:{server.port}") as client:
            columns = await client.score_batch(batch)
            items = await client.score([RewardItem("q", c, {"answer": "four", "bonus": b}, t, f) for c, b, t, f in
                                        zip(completions, batch.columns["bonus"], batch.completion_tokens,
                                            batch.finish_reasons, strict=True)])
        await server.stop(0)
        core.close()
        return columns, items

    scores, items = asyncio.run(run())
    # item 0: accuracy 1 * 1 + shaped (10 / 10 + 0.5) * 0.5 = 1 + 0.75 = 1.75
    # item 1: accuracy 0; shaped None (left out, not 0): 0.0, OK, no shaped component
    # item 2: shaped raised: ERROR, reward 0, accuracy's component kept
    # item 3: shaped returned NaN: INVALID_OUTPUT
    # item 4: accuracy 0 + shaped (20 / 10 + 2.0 - 1.0 for "length") * 0.5 = 1.5
    assert scores.rewards == pytest.approx([1.75, 0.0, 0.0, 0.0, 1.5])
    assert scores.statuses == [OK, OK, ERROR, INVALID, OK]
    assert scores.errors == {2: "shaped: ERROR: ValueError: boom", 3: "shaped: INVALID_OUTPUT: returned nan (not finite)"}
    assert scores.components["accuracy"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [None if math.isnan(v) else v for v in scores.components["shaped"]] == [1.5, None, None, None, 3.0]
    assert scores.item(1).components == {"accuracy": 0.0}
    assert scores.items() == items  # Score, one message per item, runs the same core and answers the same


def _request(n: int = 2, **fields) -> reward_pb2.ScoreBatchRequest:
    base = {"prompts": ["p"] * n, "completions": ["a"] * n, "columns": {"answer": json.dumps(["a"] * n)}}
    return reward_pb2.ScoreBatchRequest(**{**base, **fields})


@pytest.mark.parametrize(("fields", "details"), [
    ({"prompts": []}, "prompts: must hold at least one item"),
    ({"completions": ["a"]}, "completions: 1 entries for 2 prompts; every column has one entry per item"),
    ({"completion_tokens": [1, 2, 3]}, "completion_tokens: 3 entries for 2 prompts"),
    ({"finish_reasons": [common_pb2.FINISH_REASON_STOP]}, "finish_reasons: 1 entries for 2 prompts"),
    ({"finish_reasons": [common_pb2.FINISH_REASON_STOP, 9]}, "finish_reasons[1]: unknown or unspecified finish reason 9"),
    ({"columns": {"answer": '["a"]'}}, 'columns["answer"]: 1 entries for 2 prompts'),
    ({"columns": {"answer": '"a"'}}, 'columns["answer"]: must be a JSON list with one value per item, got str'),
    ({"columns": {"answer": '["a", '}}, 'columns["answer"]: value is not JSON'),
    ({"columns": {"answer": "[" + ",".join(["[" * 65 + "]" * 65] * 2) + "]"}},
     'columns["answer"]: JSON nests deeper than 64 levels'),
    ({"columns": {"prompt": '["a", "b"]'}}, 'columns["prompt"]: column names must be Python identifiers'),
])
def test_bad_columns_are_invalid_argument_naming_the_field(tmp_path, fields, details):
    async def run():
        server, core = await _serve(tmp_path, ["accuracy:1"])
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ScoreBatch(_request(**fields), timeout=30)
            # 65 levels: the list over the batch plus 64 inside an item's value, the limit Score applies per item
            at_limit = "[" + ",".join(["[" * 64 + "]" * 64] * 2) + "]"
            deep = await stub.ScoreBatch(_request(columns={"answer": at_limit}), timeout=30)
        await server.stop(0)
        core.close()
        return err.value, deep

    err, deep = asyncio.run(run())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(details), err.details()
    assert list(deep.statuses) == [common_pb2.REWARD_STATUS_OK] * 2


def test_request_id_dedupes_the_same_columns_only(tmp_path):
    async def run():
        server, core = await _serve(tmp_path, ["order"])
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)

            async def rewards(request) -> list[float]:
                return list((await stub.ScoreBatch(request, timeout=30)).rewards)

            first = _request(request_id="r-1", columns={})
            concurrent = await asyncio.gather(rewards(first), rewards(first))  # the retry joins the running work
            retry = await rewards(first)                                      # answered from the cache
            other = await rewards(_request(request_id="r-1", completions=["a", "b"], columns={}))  # other items
        await server.stop(0)
        core.close()
        return concurrent, retry, other

    concurrent, retry, other = asyncio.run(run())
    assert concurrent == [[1.0, 2.0], [1.0, 2.0]] and retry == [1.0, 2.0]  # scored once: items 1 and 2
    assert other == [3.0, 4.0]  # the same id with other completions is scored afresh


def test_a_request_that_does_not_parse_is_invalid_argument(tmp_path):
    async def run():
        server, core = await _serve(tmp_path, ["accuracy:1"])
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary("/rlfleet.v1.RewardService/ScoreBatch")  # bytes in, bytes out
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"\xff\xff\xff", timeout=30)
        await server.stop(0)
        core.close()
        return err.value

    err = asyncio.run(run())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "request: not a serialised ScoreBatchRequest"
