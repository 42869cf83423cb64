"""`rlfleet reward-server --check SCRIPT --sample rows.jsonl`: score a few rows and print them (a grader's validate)."""

from __future__ import annotations

import asyncio
import json
import sys

from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from rlfleet.outcomes import RewardBatch, RewardItem, RewardStatus
from rlfleet.workers.scripts import ScriptError

ITEM_KEYS = {"prompt", "completion", "reference", "completion_tokens", "finish_reason"}


def read_rows(path, limit: int) -> list[RewardItem]:
    """The first `limit` JSONL rows as items; `reference` becomes the `answer` column like on the wire."""
    items = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if len(items) == limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt" not in row or "completion" not in row:
                raise ScriptError(f"{path}:{number}: a row needs 'prompt' and 'completion'")
            columns = {k: v for k, v in row.items() if k not in ITEM_KEYS}
            if "reference" in row:
                columns.setdefault("answer", row["reference"])
            items.append(RewardItem(row["prompt"], row["completion"], columns, int(row.get("completion_tokens", 0)),
                                    row.get("finish_reason")))
    return items


def run_check(config: RewardConfig) -> int:
    """Prints one line per row; exit status 0 when every row scored OK, 1 otherwise, 2 for a broken script."""
    config = config.model_copy(update={"script": config.check, "workers": 1})
    try:
        items = read_rows(config.sample, config.check_rows)
        core = RewardCore(config)
        core.start_workers()
    except (ScriptError, OSError, json.JSONDecodeError) as err:
        print(f"rlfleet reward-server --check: error: {err}", file=sys.stderr)
        return 2
    try:
        core.load_model()
        scores = asyncio.run(core.score("", RewardBatch.from_items(items))).items()
    finally:
        core.close()
    print(f"script_version {core.version}; rewards " + ", ".join(f"{s.name}:{s.weight:g}" for s in core.specs))
    for i, (item, score) in enumerate(zip(items, scores, strict=True)):
        parts = " ".join(f"{k}={v:g}" for k, v in score.components.items())
        print(f"row {i}: {score.status.name} reward={score.reward:g} {parts} {score.error}".rstrip()
              + f"  | {item.completion[:60]!r}")
    return 0 if all(s.status is RewardStatus.OK for s in scores) else 1
