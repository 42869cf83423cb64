"""The in-learner rollout pipeline: keeps generators busy, scores groups, and emits batches within max_staleness.

Flow of one prompt: cursor -> Generate call (any generator; resubmitted elsewhere if that one
fails) -> group scored by every reward service -> reference log-probs (when the KL needs them) ->
ready queue -> batch. Generation of the next batches overlaps training of the current one: at
most `(max_staleness + 1) * prompts_per_batch` groups are outstanding (started, not yet trained),
and a group whose policy version lags the learner by more than `max_staleness` when it would be
batched goes back to the queue instead of being trained on.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from learner.pipeline import metrics
from learner.pipeline.config import PipelineConfig
from learner.pipeline.dataset import Cursor, PromptRow, load_rows
from learner.pipeline.generators import Endpoint, GeneratorPool
from learner.pipeline.scoring import GroupScorer
from learner.sources import RolloutSource
from rlfleet.clients import ReferenceClient, Retry
from rlfleet.config import ClientConfig
from rlfleet.generation import PromptInput, Sampling
from rlfleet.outcomes import RewardStatus
from rlfleet.rollouts import Batch, Group

log = logging.getLogger(__name__)


class GeneratorLagging(Exception):
    """A generator did not reach the policy version a request needs in time (a failed push, say)."""


@dataclass
class PipelineStats:
    """Counts for the progress view and the accounting check (issued = trained + dropped + outstanding)."""

    issued: int = 0
    trained: int = 0
    dropped: collections.Counter | None = None
    generate_calls: int = 0
    generator_failures: int = 0

    def __post_init__(self) -> None:
        self.dropped = collections.Counter()


class PipelineSource(RolloutSource):
    """A RolloutSource that generates, scores and batches rollouts itself."""

    def __init__(self, config: PipelineConfig, generators: list[str], client: ClientConfig, run_dir: Path,
                 needs_reference: bool = False, dynamic_sampling: bool = False):
        self.config = config
        train_rows, self.eval_rows = load_rows(config.dataset, config.prompt_column, config.answer_column,
                                               config.eval_split_fraction, config.seed)
        self.rows_by_id = {row.prompt_id: row for row in train_rows}
        self.cursor = Cursor(train_rows, seed=config.seed)
        self.pool = GeneratorPool(generators, client, config.retry_backoff_seconds)
        self.scorer = GroupScorer(config.rewards, client, config.reward_timeout_seconds, config.retry_backoff_seconds)
        self.reference = (ReferenceClient(config.reference, client, config.reference_timeout_seconds,
                                          Retry.constant(config.retry_backoff_seconds))
                          if needs_reference and config.reference else None)
        self.dynamic_sampling = dynamic_sampling
        self.dropped_log = config.dropped_log or run_dir / "dropped.jsonl"
        self.stats = PipelineStats()
        self._version = 0
        self._first_version: int | None = None  # version when this process started (resume-aware throttle)
        self._requeue: collections.deque[PromptRow] = collections.deque()
        self._ready: asyncio.Queue[Group] = asyncio.Queue()
        self._outstanding: collections.Counter[str] = collections.Counter()  # prompt id -> groups started, not ended
        self._inflight: set[asyncio.Task] = set()   # Generate calls
        self._scoring: set[asyncio.Task] = set()    # groups being scored
        self._changed = asyncio.Event()
        self._producer: asyncio.Task | None = None
        self._request_counter = 0

    # ---- RolloutSource -------------------------------------------------------------------------

    async def start(self) -> None:
        self._producer = asyncio.create_task(self._produce(), name="pipeline-producer")

    def set_policy_version(self, version: int) -> None:
        if self._first_version is None:
            self._first_version = version
        self._version = version
        self._changed.set()

    async def next_batch(self) -> Batch:
        groups: list[Group] = []
        while len(groups) < self.config.prompts_per_batch:
            if self._producer is not None and self._producer.done():
                self._producer.result()  # re-raises what stopped production
            try:
                group = await asyncio.wait_for(self._ready.get(), timeout=1.0)
            except TimeoutError:
                continue
            metrics.GROUPS_READY.set(self._ready.qsize())
            if self._version - group.policy_version > self.config.max_staleness:
                self._finish(group.prompt_id, "stale_requeued")
                self._requeue.append(self.rows_by_id[group.prompt_id])
                continue
            groups.append(group)
        for group in groups:
            self._finish(group.prompt_id, "trained")
        return Batch(batch_id=uuid.uuid4().hex, groups=groups, producer="pipeline")

    def state_dict(self) -> dict[str, Any]:
        # Prompts issued but not yet trained are re-issued first after a resume: none is skipped.
        return {"cursor": self.cursor.state_dict(), "requeue": [r.prompt_id for r in self._requeue],
                "outstanding": sorted(self._outstanding.elements())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state["cursor"])
        ids = list(state.get("outstanding", [])) + list(state.get("requeue", []))
        self._requeue.extend(self.rows_by_id[i] for i in dict.fromkeys(ids) if i in self.rows_by_id)

    async def close(self) -> None:
        if self._producer is not None:
            self._producer.cancel()
        tasks = list(self._inflight | self._scoring)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for prompt_id in sorted(self._outstanding.elements()):
            self._finish(prompt_id, "run_ended")
        self.write_accounting()
        await self.pool.close()
        await self.scorer.close()
        if self.reference is not None:
            await self.reference.close()

    def write_accounting(self) -> None:
        """RUN_DIR/pipeline_accounting.json: every prompt issued ended as trained or dropped (by reason)."""
        dropped = {k: v for k, v in self.stats.dropped.items() if k != "stale_requeued"}
        record = {"issued": self.stats.issued, "trained": self.stats.trained, "dropped": dropped,
                  "requeued_stale": self.stats.dropped["stale_requeued"], "generate_calls": self.stats.generate_calls,
                  "generator_failures": self.stats.generator_failures,
                  "generator_busy_seconds": self.pool.busy_seconds()}
        (self.dropped_log.parent / "pipeline_accounting.json").write_text(json.dumps(record, indent=1) + "\n")

    # ---- production ------------------------------------------------------------------------------

    def _take_rows(self) -> list[PromptRow]:
        # Groups of batch k may start once the learner reached version k - max_staleness: with 0, the
        # next batch waits for the update; with 1, it is generated while the current one trains.
        steps = self._version - (self._first_version or 0)
        allowed = (steps + self.config.max_staleness + 1) * self.config.prompts_per_batch
        capacity = allowed - self.stats.trained - sum(self._outstanding.values())
        rows = []
        while len(rows) < min(capacity, self.config.prompts_per_request):
            rows.append(self._requeue.popleft() if self._requeue else self.cursor.next())
        return rows

    async def _produce(self) -> None:
        while True:
            rows = self._take_rows() if len(self._inflight) < self.config.max_inflight_requests else []
            if not rows:
                self._changed.clear()
                await self._changed.wait()
                continue
            for row in rows:
                self._start(row)
            task = asyncio.create_task(self._generate(rows))
            self._inflight.add(task)
            metrics.INFLIGHT.set(len(self._inflight))
            task.add_done_callback(self._request_done)

    def _start(self, row: PromptRow) -> None:
        self._outstanding[row.prompt_id] += 1
        self.stats.issued += 1

    def _request_done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        metrics.INFLIGHT.set(len(self._inflight))
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("rollout request failed: %r", task.exception())

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
        self._changed.set()

    def _sampling(self) -> Sampling:
        self._request_counter += 1
        c = self.config
        return Sampling(n=c.group_size, max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p,
                        stop=tuple(c.stop), seed=c.seed * 1_000_003 + self._request_counter)

    async def _generate(self, rows: list[PromptRow]) -> None:
        """One Generate call; prompts it did not return are resubmitted (to another generator)."""
        remaining = {row.prompt_id: row for row in rows}
        prompts = [PromptInput.from_dataset(row.prompt_id, row.prompt, self.config.chat_template) for row in rows]
        sampling = self._sampling()
        endpoint = await self.pool.acquire()
        start, failed = time.perf_counter(), False
        self.stats.generate_calls += 1
        try:
            await self._wait_for_version(endpoint, self._version - self.config.max_staleness)
            stream = endpoint.client.generate(prompts, sampling, timeout=self.config.generate_timeout_seconds)
            async for group in stream:
                endpoint.policy_version = max(endpoint.policy_version, group.policy_version)
                row = remaining.pop(group.prompt_id, None)
                if row is not None:
                    group.columns = dict(row.columns)
                    task = asyncio.create_task(self._score(group, row))
                    self._scoring.add(task)
                    task.add_done_callback(self._scoring.discard)
        except (grpc.aio.AioRpcError, GeneratorLagging) as err:
            failed = True
            self.stats.generator_failures += 1
            reason = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
            log.warning("generator %s failed (%s); resubmitting %d prompts elsewhere", endpoint.address, reason,
                        len(remaining))
        finally:
            self.pool.release(endpoint, failed)
            metrics.GENERATE_LATENCY.observe(time.perf_counter() - start)
        if remaining:
            for row in remaining.values():  # not ended: re-counted by _start when re-issued
                self._outstanding[row.prompt_id] -= 1
                if self._outstanding[row.prompt_id] <= 0:
                    del self._outstanding[row.prompt_id]
                self.stats.issued -= 1
            self._requeue.extendleft(reversed(list(remaining.values())))
            self._changed.set()

    async def _wait_for_version(self, endpoint: Endpoint, needed: int) -> None:
        """Waits until `endpoint` serves at least version `needed`, so no rollout is generated only to be stale.

        The learner pushes in the background and the pipeline may issue the next batch at once; without
        this wait the first calls after an update ran on the old adapter and were thrown away.
        """
        deadline = time.monotonic() + self.config.version_wait_seconds
        while endpoint.policy_version < needed:
            endpoint.policy_version = (await endpoint.client.info(timeout=5.0)).policy_version
            if endpoint.policy_version >= needed:
                return
            if time.monotonic() > deadline:
                raise GeneratorLagging(f"serves policy v{endpoint.policy_version}, needs v{needed} "
                                       f"within {self.config.version_wait_seconds:.0f}s")
            await asyncio.sleep(0.05)

    async def _score(self, group: Group, row: PromptRow) -> None:
        try:
            await self._score_group(group, row)
        except Exception as err:  # noqa: BLE001 - a prompt is never lost silently: it is dropped with the reason
            log.exception("scoring prompt %s failed", group.prompt_id)
            self._finish(group.prompt_id, "scoring_failed", repr(err))

    async def _score_group(self, group: Group, row: PromptRow) -> None:
        errors = await self.scorer.score(group, row)
        failed = [s for s in group.samples if s.reward_status is not RewardStatus.OK]
        if failed and self.config.reward_failure_policy == "drop_group":
            self._finish(group.prompt_id, "reward_error", "; ".join(errors))
            return
        for sample in failed:  # policy "zero": trained on with reward 0, and counted
            sample.reward = 0.0
            metrics.PROMPTS.labels("reward_zeroed_samples").inc()
        if self.dynamic_sampling and len({s.reward for s in group.samples}) == 1:
            self._finish(group.prompt_id, "uniform_rewards")
            return
        if self.reference is not None:
            await self.reference.fill(group)
        await self._ready.put(group)
        metrics.GROUPS_READY.set(self._ready.qsize())
