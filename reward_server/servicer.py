"""RewardService over gRPC: protobuf <-> reward_server domain types, nothing else."""

from __future__ import annotations

from reward_server.core import RewardCore
from rlfleet.errors import InvalidRequest
from rlfleet.outcomes import ItemScore, RewardItem, finish_reason_from_proto, reward_status_to_proto
from rlfleet.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from rlfleet.workers.columns import decode_column

# Names a reward function already receives positionally or from the item itself.
RESERVED_COLUMNS = {"prompt", "completion", "prompts", "completions", "completion_tokens", "finish_reason"}


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
