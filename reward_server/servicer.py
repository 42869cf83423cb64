"""RewardService over gRPC: protobuf <-> reward_server domain types (RewardBatch in, BatchScores out), nothing else.

ScoreBatch carries columns both ways; Score (one message per item) is converted to the same RewardBatch
and answered from the same BatchScores, so both RPCs run the one core path. Both receive their request
still serialised (rlfleet.server.add_servicer's raw_requests): its bytes are the dedupe digest, which
costs ~5 us for 512 items where pickling the parsed columns cost ~100 us.
"""

from __future__ import annotations

import math

import xxhash

from reward_server.core import RewardCore
from rlfleet.errors import InvalidRequest
from rlfleet.outcomes import BatchScores, RewardBatch, finish_reason_from_proto, reward_status_to_proto
from rlfleet.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from rlfleet.workers.columns import decode_column

# Names a reward function already receives positionally or from the item itself.
RESERVED_COLUMNS = {"prompt", "completion", "prompts", "completions", "completion_tokens", "finish_reason"}
UNSPECIFIED = common_pb2.FINISH_REASON_UNSPECIFIED
STATUS_OK = common_pb2.REWARD_STATUS_OK


def parse(message_type, raw):
    """(the request message in `raw`, the digest of its bytes); InvalidRequest when it does not parse. A message
    already parsed (a servicer registered without raw_requests, as some tests do) is hashed as serialised."""
    if isinstance(raw, message_type):
        return raw, xxhash.xxh3_128_digest(raw.SerializeToString(deterministic=True))
    try:
        return message_type.FromString(raw), xxhash.xxh3_128_digest(raw)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError type differs between its backends
        raise InvalidRequest("request", f"not a serialised {message_type.DESCRIPTOR.name}") from None


def check_column_name(field: str, name: str) -> None:
    if name in RESERVED_COLUMNS or not name.isidentifier():
        raise InvalidRequest(field, "column names must be Python identifiers other than "
                                    f"{', '.join(sorted(RESERVED_COLUMNS))}")


def _same_length(field: str, values, n: int) -> None:
    if len(values) != n:
        raise InvalidRequest(field, f"{len(values)} entries for {n} prompts; every column has one entry per item")


def batch_from_proto(request: reward_pb2.ScoreBatchRequest) -> RewardBatch:
    """The request's columns, each checked to hold one entry per prompt and the JSON columns decoded."""
    n = len(request.prompts)
    if n == 0:
        raise InvalidRequest("prompts", "must hold at least one item")
    completions = list(request.completions)
    _same_length("completions", completions, n)
    tokens = list(request.completion_tokens) or None
    if tokens is not None:
        _same_length("completion_tokens", tokens, n)
    finish_reasons = None
    if request.finish_reasons:
        _same_length("finish_reasons", request.finish_reasons, n)
        finish_reasons = [finish_reason_from_proto(value, f"finish_reasons[{i}]") if value != UNSPECIFIED else None
                          for i, value in enumerate(request.finish_reasons)]
    columns = {}
    for name, text in request.columns.items():
        field = f'columns["{name}"]'
        check_column_name(field, name)
        values = decode_column(field, text, outer=1)
        if type(values) is not list:
            raise InvalidRequest(field, f"must be a JSON list with one value per item, got {type(values).__name__}")
        _same_length(field, values, n)
        columns[name] = values
    return RewardBatch(list(request.prompts), completions, columns, tokens, finish_reasons)


def batch_from_items(items) -> RewardBatch:
    """Score's items as one batch: each item's JSON columns decoded, `reference` as its `answer` column
    (unless it has one); an item without a column that another item has gets None there."""
    n = len(items)
    columns: dict[str, list] = {}
    for i, item in enumerate(items):
        for name, text in (item.columns.items() if item.columns else ()):
            field = f'items[{i}].columns["{name}"]'
            if name not in columns:
                check_column_name(field, name)
                columns[name] = [None] * n
            columns[name][i] = decode_column(field, text)
        if item.HasField("reference") and "answer" not in item.columns:
            columns.setdefault("answer", [None] * n)[i] = item.reference
    tokens = [item.completion_tokens for item in items]
    finish = [finish_reason_from_proto(item.finish_reason, f"items[{i}].finish_reason")
              if item.finish_reason != UNSPECIFIED else None for i, item in enumerate(items)]
    return RewardBatch([item.prompt for item in items], [item.completion for item in items], columns,
                       tokens if any(tokens) else None, finish if any(r is not None for r in finish) else None)


def batch_scores_to_proto(scores: BatchScores, script_version: str) -> reward_pb2.ScoreBatchResponse:
    statuses = ([STATUS_OK] * len(scores.rewards) if not scores.errors
                else [reward_status_to_proto(status) for status in scores.statuses])
    response = reward_pb2.ScoreBatchResponse(rewards=scores.rewards, statuses=statuses, errors=scores.errors,
                                             script_version=script_version)
    for name, values in scores.components.items():
        response.components.add(name=name, values=values)
    return response


def scores_to_proto(scores: BatchScores, script_version: str) -> reward_pb2.ScoreResponse:
    # results.add() plus item assignment into the map is ~2.5x faster than constructing each
    # RewardResult with a components dict (measured: 58 vs 144 us for 64 items).
    response = reward_pb2.ScoreResponse(script_version=script_version)
    components = list(scores.components.items())
    for i, reward in enumerate(scores.rewards):
        result = response.results.add(reward=reward, status=reward_status_to_proto(scores.statuses[i]))
        if i in scores.errors:
            result.error = scores.errors[i]
        for name, values in components:
            if not math.isnan(values[i]):
                result.components[name] = values[i]
    return response


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """Translates ScoreBatch, Score and ListRewards calls for a RewardCore."""

    RAW_REQUESTS = ("ScoreBatch", "Score")
    """Methods registered with their request still serialised (see the module docstring)."""

    def __init__(self, core: RewardCore):
        self.core = core

    async def ScoreBatch(self, raw: bytes | reward_pb2.ScoreBatchRequest, context) -> reward_pb2.ScoreBatchResponse:
        request, digest = parse(reward_pb2.ScoreBatchRequest, raw)
        scores = await self.core.score(request.request_id, batch_from_proto(request), digest)
        return batch_scores_to_proto(scores, self.core.version)

    async def Score(self, raw: bytes | reward_pb2.ScoreRequest, context) -> reward_pb2.ScoreResponse:
        request, digest = parse(reward_pb2.ScoreRequest, raw)
        if not request.items:
            raise InvalidRequest("items", "must hold at least one item")
        scores = await self.core.score(request.request_id, batch_from_items(request.items), digest)
        return scores_to_proto(scores, self.core.version)

    async def ListRewards(self, request: reward_pb2.ListRewardsRequest, context) -> reward_pb2.ListRewardsResponse:
        specs = [reward_pb2.RewardSpec(name=s.name, weight=s.weight, kind=s.kind, description=s.description)
                 for s in self.core.specs]
        return reward_pb2.ListRewardsResponse(rewards=specs, script_version=self.core.version)
