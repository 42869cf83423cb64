"""RewardService over gRPC: protobuf <-> reward_server domain types, nothing else."""

from __future__ import annotations

import json

from reward_server.core import RewardCore
from rlfleet.errors import InvalidRequest
from rlfleet.outcomes import ItemScore, RewardItem, finish_reason_from_proto, reward_status_to_proto
from rlfleet.v1 import common_pb2, reward_pb2, reward_pb2_grpc

# Names a reward function already receives positionally or from the item itself.
RESERVED_COLUMNS = {"prompt", "completion", "prompts", "completions", "completion_tokens", "finish_reason"}
# Nesting a column may have: dataset columns are a few levels deep, while 10,000 levels raised
# RecursionError in json.loads (INTERNAL), and a few hundred fewer would do so later, when the item is
# pickled to a worker or hashed for dedupe.
MAX_COLUMN_DEPTH = 64


def _nested_deeper(value, limit: int) -> bool:
    """Whether lists/dicts in `value` nest more than `limit` levels (iterative: no recursion of our own)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in node)
    return False


def decode_column(field: str, text: str):
    """The JSON value of one column; InvalidRequest naming `field` when it is not JSON or nests too deep."""
    too_deep = InvalidRequest(field, f"JSON nests deeper than {MAX_COLUMN_DEPTH} levels of lists/objects")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(field, f"value is not JSON ({err.msg}); columns are JSON-encoded") from None
    except RecursionError:
        raise too_deep from None
    # Fewer brackets than the limit cannot nest past it: the walk runs only for the rare column that might.
    if text.count("[") + text.count("{") > MAX_COLUMN_DEPTH and _nested_deeper(value, MAX_COLUMN_DEPTH):
        raise too_deep
    return value


def item_from_proto(index: int, item: reward_pb2.RewardItem) -> RewardItem:
    """One RewardItem with its columns JSON-decoded and `reference` passed as the `answer` column."""
    columns = {}
    for key, text in (item.columns.items() if item.columns else ()):
        field = f'items[{index}].columns["{key}"]'
        if key in RESERVED_COLUMNS or not key.isidentifier():
            raise InvalidRequest(field, "column names must be Python identifiers other than "
                                        f"{', '.join(sorted(RESERVED_COLUMNS))}")
        columns[key] = decode_column(field, text)
    if item.HasField("reference") and "answer" not in columns:
        columns["answer"] = item.reference
    finish_reason = (finish_reason_from_proto(item.finish_reason, f"items[{index}].finish_reason")
                     if item.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED else None)
    return RewardItem(item.prompt, item.completion, columns, item.completion_tokens, finish_reason)


def scores_to_proto(scores: list[ItemScore], script_version: str) -> reward_pb2.ScoreResponse:
    # results.add() plus item assignment into the map is ~2.5x faster than constructing each
    # RewardResult with a components dict (measured: 58 vs 144 us for 64 items).
    response = reward_pb2.ScoreResponse(script_version=script_version)
    for score in scores:
        result = response.results.add(reward=score.reward, status=reward_status_to_proto(score.status))
        if score.error:
            result.error = score.error
        for name, value in score.components.items():
            result.components[name] = value
    return response


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Translates Score and ListRewards calls for a RewardCore."""

    def __init__(self, core: RewardCore):
        self.core = core

    async def Score(self, request: reward_pb2.ScoreRequest, context) -> reward_pb2.ScoreResponse:
        if not request.items:
            raise InvalidRequest("items", "must hold at least one item")
        items = [item_from_proto(i, item) for i, item in enumerate(request.items)]
        scores = await self.core.score(request.request_id, items)
        return scores_to_proto(scores, self.core.version)

    async def ListRewards(self, request: reward_pb2.ListRewardsRequest, context) -> reward_pb2.ListRewardsResponse:
        specs = [reward_pb2.RewardSpec(name=s.name, weight=s.weight, kind=s.kind, description=s.description)
                 for s in self.core.specs]
        return reward_pb2.ListRewardsResponse(rewards=specs, script_version=self.core.version)
