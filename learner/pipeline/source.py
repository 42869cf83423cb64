"""The in-learner rollout pipeline: admits batches by the staleness bound, rolls them out, scores them in bulk, emits them.

Flow of one training batch k: admitted -> its prompts issued together, with the oldest policy version
they may be generated at fixed at issue (from k: it is trained at version first + k) -> the rollout driver
(learner/pipeline/rollout.py, the seam a multi-turn driver plugs into) turns them into groups ->
scored in bulk (every group finished since the last Score call goes into the next one) ->
reference log-probs in bulk (when the KL needs them) -> batch k's slot -> `next_batch`, in order.

Admission, not regeneration: batch k is issued once the learner is done with batch
k - max_staleness - 1 and (generate_in_order) batch k - 1's generation has finished, so one batch
is trained while the next generates instead of admitted batches sharing the engine and arriving in
a burst. Its groups are generated at a version v >= first + k - max_lag (issued at the earliest,
the newest version pushed then; issued later, whatever the generators serve by then, with no wait
for a fresh push) and trained at version first + k, so no rollout is generated only to be thrown
away as stale. The learner pushes every `push_every_steps` (N) steps, so the newest pushed version
is at least its own version less N - 1, and a rollout lags it by at most max_staleness + N - 1
steps (N = 1: max_staleness). Asking for the learner's own version, unpushed, waited for a push
that came only after that very batch was trained: with N > max_staleness + 1 the run hung.
Nothing past `max_steps` is issued unless the learner asks for it (a step that made no update),
so a run ends with no work in flight. A group that is dropped (reward error, uniform rewards
under dynamic sampling, a lag past the bound from a generator that went back to an older
version) is replaced in its batch by a new prompt.

Every prompt taken from the dataset ends as `trained` or as dropped with a reason, counted in
`rlfleet_pipeline_prompts_total` and listed in RUN_DIR/dropped.jsonl.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.pipeline import metrics
from learner.pipeline.config import PipelineConfig
from learner.pipeline.dataset import Cursor, PromptRow, load_rows
from learner.pipeline.generators import GeneratorPool
from learner.pipeline.rollout import Dropped, RolloutDriver, RolloutStats, SingleTurnDriver
from learner.pipeline.scoring import GroupScorer, fill_reference
from learner.sources import RolloutSource
from rlfleet.clients import ReferenceClient, Retry
from rlfleet.config import ClientConfig
from rlfleet.outcomes import RewardStatus
from rlfleet.rollouts import Batch, Group

log = logging.getLogger(__name__)


@dataclass
class PipelineStats(RolloutStats):
    """Counts for the progress view and the accounting check (issued = trained + dropped + outstanding)."""

    issued: int = 0
    trained: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    batches_issued: int = 0
    score_calls: int = 0
    reference_calls: int = 0


@dataclass
class Slot:
    """One training batch in the making: its prompts, issued together, and the groups ready so far."""

    index: int
    min_version: int                         # every group of it is generated at this policy version or newer
    groups: list[Group] = field(default_factory=list)
    generating: int = 0                      # its first rollouts still running (replacements not counted)


Work = tuple[Slot, PromptRow, Group]


class PipelineSource(RolloutSource):
    """A RolloutSource that generates, scores and batches rollouts itself."""

    def __init__(self, config: PipelineConfig, generators: list[str], client: ClientConfig, run_dir: Path,
                 needs_reference: bool = False, dynamic_sampling: bool = False, max_steps: int | None = None,
                 driver: RolloutDriver | None = None, push_every_steps: int = 1):
        if push_every_steps < 1:
            raise ValueError(f"push.push_every_steps: must be >= 1, got {push_every_steps}")
        self.config = config
        self.push_every_steps = push_every_steps
        self.max_lag = config.max_staleness + push_every_steps - 1   # steps a rollout may lag the learner
        train_rows, self.eval_rows = load_rows(config.dataset, config.prompt_column, config.answer_column,
                                               config.eval_split_fraction, config.seed)
        self.rows_by_id = {row.prompt_id: row for row in train_rows}
        self.cursor = Cursor(train_rows, seed=config.seed)
        self.stats = PipelineStats()
        self.pool = GeneratorPool(generators, client, config.retry_backoff_seconds)
        self.driver = driver or SingleTurnDriver(self.pool, config, self.stats)
        self.scorer = GroupScorer(config.rewards, client, config.reward_timeout_seconds, config.retry_backoff_seconds,
                                  config.max_items_per_score_call)
        self.reference = (ReferenceClient(config.reference, client, config.reference_timeout_seconds,
                                          Retry.constant(config.retry_backoff_seconds))
                          if needs_reference and config.reference else None)
        self.dynamic_sampling = dynamic_sampling
        self.max_steps = max_steps
        self.dropped_log = config.dropped_log or run_dir / "dropped.jsonl"
        self._version = 0
        self._first_version = 0                # the learner's version when the pipeline started
        self._max_batches: int | None = None   # batches this process issues unasked (max_steps less the resumed step)
        self._started = asyncio.Event()        # the first set_policy_version came
        self._requeue: collections.deque[PromptRow] = collections.deque()
        self._outstanding: collections.Counter[str] = collections.Counter()  # prompt id -> issued, not ended
        self._slots: dict[int, Slot] = {}
        self._issued = 0      # batches issued
        self._delivered = 0   # batches handed to the learner
        self._released = 0    # batches the learner is done with
        self._asked = 0       # batches the learner asked for
        self._to_score: list[Work] = []
        self._to_reference: list[Work] = []
        self._wake = {"produce": asyncio.Event(), "score": asyncio.Event(), "reference": asyncio.Event()}
        self._progress = asyncio.Event()       # a slot gained a group, or something failed
        self._tasks: set[asyncio.Task] = set()
        self._failure: BaseException | None = None

    # ---- RolloutSource -------------------------------------------------------------------------

    async def start(self) -> None:
        for name, stage in (("produce", self._produce), ("score", self._score_stage),
                            ("reference", self._reference_stage)):
            self._spawn(stage(), f"pipeline-{name}")

    def set_policy_version(self, version: int) -> None:
        if not self._started.is_set():
            self._max_batches = None if self.max_steps is None else max(0, self.max_steps - version)
            self._first_version = version
            self._started.set()
        self._version = version
        self._released = self._delivered
        self._wake["produce"].set()

    async def next_batch(self) -> Batch:
        index = self._delivered
        self._released, self._asked = index, index + 1
        self._wake["produce"].set()
        while True:
            self._progress.clear()
            if self._failure is not None:
                raise self._failure
            slot = self._slots.get(index)
            if slot is not None:
                self._drop_stale(slot)
                if len(slot.groups) >= self.config.prompts_per_batch:
                    break
            await self._progress.wait()
        del self._slots[index]
        self._delivered += 1
        metrics.GROUPS_READY.set(sum(len(s.groups) for s in self._slots.values()))
        for group in slot.groups:
            self._finish(group.prompt_id, "trained")
        return Batch(batch_id=uuid.uuid4().hex, groups=slot.groups, producer="pipeline")

    def state_dict(self) -> dict[str, Any]:
        # Prompts issued but not yet trained are re-issued first after a resume: none is skipped.
        return {"cursor": self.cursor.state_dict(), "requeue": [r.prompt_id for r in self._requeue],
                "outstanding": sorted(self._outstanding.elements())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state["cursor"])
        ids = list(state.get("outstanding", [])) + list(state.get("requeue", []))
        self._requeue.extend(self.rows_by_id[i] for i in dict.fromkeys(ids) if i in self.rows_by_id)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for prompt_id in sorted(self._outstanding.elements()):
            self._finish(prompt_id, "run_ended")
        self.write_accounting()
        await self.driver.close()
        await self.pool.close()
        await self.scorer.close()
        if self.reference is not None:
            await self.reference.close()

    def write_accounting(self) -> None:
        """RUN_DIR/pipeline_accounting.json: every prompt issued ended as trained or dropped (by reason)."""
        s = self.stats
        dropped = {k: v for k, v in s.dropped.items() if k != "stale_requeued"}
        record = {"issued": s.issued, "trained": s.trained, "dropped": dropped,
                  "requeued_stale": s.dropped["stale_requeued"], "batches_issued": s.batches_issued,
                  "generate_calls": s.generate_calls, "generator_failures": s.generator_failures,
                  "score_calls": s.score_calls, "reference_calls": s.reference_calls,
                  "generator_busy_seconds": self.pool.busy_seconds()}
        (self.dropped_log.parent / "pipeline_accounting.json").write_text(json.dumps(record, indent=1) + "\n")

    # ---- admission -------------------------------------------------------------------------------

    def _admitted(self) -> bool:
        """Batch `self._issued` may start: within max_staleness of the learner, and wanted."""
        k = self._issued
        if k > self._released + self.config.max_staleness:
            return False
        if self.config.generate_in_order and any(slot.generating for slot in self._slots.values()):
            return False
        return self._max_batches is None or k < self._max_batches or k < self._asked

    async def _produce(self) -> None:
        await self._started.wait()
        while True:
            self._wake["produce"].clear()
            while self._admitted():
                slot = Slot(self._issued, self._oldest_acceptable(self._issued))
                self._slots[slot.index] = slot
                self._issued += 1
                self.stats.batches_issued += 1
                self._issue(slot, self.config.prompts_per_batch, first=True)
            await self._wake["produce"].wait()

    def _oldest_acceptable(self, index: int) -> int:
        """The oldest policy version batch `index` may be generated at: it is trained at learner version
        first + index, and may lag that by max_lag. Fixed by the batch's index, not by the clock: a batch
        issued later than admission allows (in order, after the previous one's generation) takes the
        version the generators already serve instead of waiting for one just pushed. Issued at the
        earliest, this is the newest version pushed by then (the learner's, less push_every_steps - 1)."""
        return max(0, self._first_version + index - self.max_lag)

    def _issue(self, slot: Slot, count: int, first: bool = False) -> None:
        """Starts `count` new prompts for `slot` (a new batch, or replacements of dropped groups)."""
        rows = [self._requeue.popleft() if self._requeue else self.cursor.next() for _ in range(count)]
        for row in rows:
            self._outstanding[row.prompt_id] += 1
            self.stats.issued += 1
        # A replacement must not come back stale itself: it needs a version within the bound of now.
        min_version = max(slot.min_version, self._version - self.max_lag)
        slot.generating += first
        self._spawn(self._roll_out(slot, rows, min_version, first), f"pipeline-rollout-{slot.index}")

    async def _roll_out(self, slot: Slot, rows: list[PromptRow], min_version: int, first: bool) -> None:
        try:
            async for row, group in self.driver.rollout(rows, min_version):
                if isinstance(group, Dropped):
                    self._drop(slot, row, group.reason, group.detail)
                    continue
                self._to_score.append((slot, row, group))
                self._wake["score"].set()
        finally:
            if first:
                slot.generating -= 1
                self._wake["produce"].set()

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            log.error("%s failed: %r", task.get_name(), task.exception())
            self._failure = task.exception()
            self._progress.set()

    # ---- scoring and reference, in bulk ----------------------------------------------------------

    async def _score_stage(self) -> None:
        """Scores every group finished since the last Score call in one call per reward service."""
        while True:
            await self._wake["score"].wait()
            self._wake["score"].clear()
            work, self._to_score = self._to_score, []
            if not work:
                continue
            self.stats.score_calls += 1
            try:
                errors = await self.scorer.score([(group, row) for _, row, group in work])
            except Exception as err:  # noqa: BLE001 - a prompt is never lost silently: it is dropped with the reason
                log.exception("scoring %d groups failed", len(work))
                for slot, row, _ in work:
                    self._drop(slot, row, "scoring_failed", repr(err))
                continue
            kept = [w for w, errs in zip(work, errors, strict=True) if self._judge(w, errs)]
            if self.reference is None:
                for slot, _, group in kept:
                    self._ready(slot, group)
            else:
                self._to_reference += kept
                self._wake["reference"].set()

    def _judge(self, work: Work, errors: list[str]) -> bool:
        """Applies the reward failure policy and dynamic sampling to a scored group; False = dropped."""
        slot, row, group = work
        failed = [s for s in group.samples if s.reward_status is not RewardStatus.OK]
        if failed and self.config.reward_failure_policy == "drop_group":
            self._drop(slot, row, "reward_error", "; ".join(errors))
            return False
        for sample in failed:  # policy "zero": trained on with reward 0, and counted
            sample.reward = 0.0
            metrics.PROMPTS.labels("reward_zeroed_samples").inc()
        if self.dynamic_sampling and len({s.reward for s in group.samples}) == 1:
            self._drop(slot, row, "uniform_rewards")
            return False
        return True

    async def _reference_stage(self) -> None:
        """Reference log-probs of every scored group waiting, in one LogProbs call."""
        while True:
            await self._wake["reference"].wait()
            self._wake["reference"].clear()
            work, self._to_reference = self._to_reference, []
            if not work or self.reference is None:
                continue
            self.stats.reference_calls += 1
            start = time.perf_counter()
            try:
                await fill_reference(self.reference, [group for _, _, group in work])
            except Exception as err:  # noqa: BLE001 - dropped with the reason, never lost silently
                log.exception("reference log-probs of %d groups failed", len(work))
                for slot, row, _ in work:
                    self._drop(slot, row, "reference_failed", repr(err))
                continue
            metrics.REFERENCE_LATENCY.observe(time.perf_counter() - start)
            for slot, _, group in work:
                self._ready(slot, group)

    # ---- outcomes --------------------------------------------------------------------------------

    def _ready(self, slot: Slot, group: Group) -> None:
        slot.groups.append(group)
        metrics.GROUPS_READY.set(sum(len(s.groups) for s in self._slots.values()))
        self._progress.set()

    def _drop_stale(self, slot: Slot) -> None:
        """Groups of `slot` lagging the learner past the bound (a generator went back to an older
        version) are dropped and replaced; admission makes this rare."""
        stale = [g for g in slot.groups if self._version - g.policy_version > self.max_lag]
        for group in stale:
            slot.groups.remove(group)
            self._finish(group.prompt_id, "stale_requeued")
            self._requeue.append(self.rows_by_id[group.prompt_id])
        if stale:
            self._issue(slot, len(stale))

    def _drop(self, slot: Slot, row: PromptRow, reason: str, detail: str = "") -> None:
        """Ends `row`'s prompt as dropped and issues a replacement for its batch."""
        self._finish(row.prompt_id, reason, detail)
        if slot.index in self._slots:
            self._issue(slot, 1)

    def _finish(self, prompt_id: str, outcome: str, reason: str = "") -> None:
        """Ends one prompt's journey: trained, or dropped with a reason (logged to dropped.jsonl)."""
        self._outstanding[prompt_id] -= 1
        if self._outstanding[prompt_id] <= 0:
            del self._outstanding[prompt_id]
        metrics.PROMPTS.labels(outcome).inc()
        if outcome == "trained":
            self.stats.trained += 1
        else:
            self.stats.dropped[outcome] += 1
            if outcome != "stale_requeued":
                self.dropped_log.parent.mkdir(parents=True, exist_ok=True)
                with open(self.dropped_log, "a") as f:
                    f.write(json.dumps({"prompt_id": prompt_id, "reason": outcome, "detail": reason[:500],
                                        "time": time.time()}) + "\n")
