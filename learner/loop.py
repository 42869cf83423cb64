"""The learner's loop: collect_rollouts -> train_step -> push_weights -> checkpoint, until max_steps or SIGTERM.

    source = make_source(config, trainer)
    loop = TrainingLoop(config, trainer, source, AdapterPusher(config.generators, config.push, config.client))
    state = await loop.run()

Torch work runs in a worker thread (`asyncio.to_thread`), so the event loop keeps serving
PushRollouts / GetPolicy / GetStatus during a step. Each step appends one flat JSON record to
RUN_DIR/metrics.jsonl and is handed to every `on_step` callback (evaluation, progress bars).

Run identity: every learner process takes a new `run_id` (LearnerState), a resume from a checkpoint
included, and every adapter it pushes or serves carries it. A resumed run goes on numbering from
its checkpoint's version, but versions after that checkpoint may already have reached generators
with weights this process will not reproduce (its rollouts differ), so keeping the id would let one
number name two adapters. With a new id, generators drop the old run's versions instead
(generator/policy.py); the resumed adapter is pushed at once so they do so before any rollout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from learner import metrics
from learner.admission import BatchLimits, keep_valid_groups
from learner.checkpoint import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from learner.config import LearnerConfig
from learner.push import AdapterPusher, serialise_adapter
from learner.sources import RolloutSource
from learner.trainer import Trainer
from rlfleet import cpu
from rlfleet.adapters import AdapterPayload, adapter_from_dir, write_adapter_dir
from rlfleet.rollouts import Batch

log = logging.getLogger(__name__)

StepCallback = Callable[[dict[str, float]], None]


def make_source(config: LearnerConfig, trainer: Trainer | None = None) -> RolloutSource:
    """The rollout source the config names: the PushRollouts queue, or the in-learner pipeline."""
    if config.source.type == "push":
        from learner.queue_source import QueueSource

        return QueueSource(config.source.max_queued_batches, config.source.remembered_batch_ids,
                           require_ref_logprobs=config.needs_reference_service)
    from learner.pipeline import make_pipeline_source

    return make_pipeline_source(config, trainer)


@dataclass
class LearnerState:
    """What GetStatus and GetPolicy read while the loop runs."""

    step: int = 0
    policy_version: int = 0
    state: str = "starting"
    last_staleness: int = 0
    adapter: AdapterPayload | None = None
    error: str = ""
    pushes: list[asyncio.Task] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-"
                                                f"{uuid.uuid4().hex[:8]}")
    """This process's run identity, carried by every adapter version it produces (see the module docstring)."""


class TrainingLoop:
    """Drives a Trainer from a RolloutSource; see the module docstring."""

    def __init__(self, config: LearnerConfig, trainer: Trainer, source: RolloutSource, pusher: AdapterPusher,
                 on_step: list[StepCallback] | None = None, status: LearnerState | None = None):
        self.config = config
        self.trainer = trainer
        self.source = source
        self.pusher = pusher
        self.on_step = list(on_step or [])
        self.status = status or LearnerState()
        self.run_dir = Path(config.run_dir)
        self._stop = asyncio.Event()
        self._last_checkpoint = 0

    def request_stop(self) -> None:
        """Finishes the current step, checkpoints and returns (SIGTERM)."""
        self._stop.set()

    async def run(self) -> LearnerState:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cpu.own_thread("pipeline")  # this event loop runs the pipeline's calls while the trainer's threads compute
        try:
            log.info("learner run %s", self.status.run_id)
            if self.config.checkpoint.resume:
                await asyncio.to_thread(self.resume)
                if self.config.generators:
                    self.status.pushes.append(asyncio.ensure_future(self.pusher.push(self.status.adapter)))
            _trim_metrics(self.run_dir / "metrics.jsonl", self.status.step)
            self.source.set_limits(self.limits())
            await self.source.start()
            self.source.set_policy_version(self.status.policy_version)
            while self.status.step < self.config.max_steps and not self._stop.is_set():
                await self.iteration()
            await self.finish()
        except BaseException as err:
            self.status.state = "failed"
            self.status.error = repr(err)
            raise
        finally:
            await self.source.close()
        return self.status

    async def iteration(self) -> None:
        """One step: collect_rollouts -> train_step -> push_weights -> (checkpoint)."""
        start = time.perf_counter()
        with cpu.phase("wait"):
            batch = await self.collect_rollouts()
        batch = self.admit(batch) if batch is not None else None
        if batch is None:
            return
        wait = time.perf_counter() - start
        self.status.state = "training"
        trained_from = self.status.policy_version
        with cpu.phase("train"):  # the trainer names its parts (forward_backward, optimizer)
            result = await asyncio.to_thread(self._mirrored, "train", batch, trained_from)
        metrics.DROPPED_GROUPS.inc(result.dropped_groups)
        if result.skipped_updates:
            self.report_skipped(batch, result.skipped_updates, result.updates, result.metrics)
        if result.updates == 0:
            if not result.skipped_updates:
                log.info("batch %s: every group dropped by dynamic sampling; no update", batch.batch_id)
            return
        self.status.step += 1
        self.status.policy_version = self.status.step
        self.status.last_staleness = int(result.metrics["staleness_max"])
        push_start = time.perf_counter()
        with cpu.phase("push"):
            await self.push_weights()
        push = time.perf_counter() - push_start
        self.source.set_policy_version(self.status.policy_version)
        self.source.set_limits(self.limits())
        train = result.metrics.get("forward_backward_seconds", 0.0) + result.metrics.get("optimizer_seconds", 0.0)
        record = {**result.metrics, "wait_seconds": wait, "push_seconds": push,
                  "step_seconds": time.perf_counter() - start, "optimizer_updates": float(result.updates),
                  "trained_tokens": float(result.trained_tokens),
                  "tokens_per_second": result.trained_tokens / train if train > 0 else 0.0}
        self.log_step(record)
        if self.status.step - self._last_checkpoint >= self.config.checkpoint.every_steps:
            with cpu.phase("checkpoint"):
                await asyncio.to_thread(self.checkpoint)

    def limits(self) -> BatchLimits:
        """What a batch must fit now: the model's vocabulary and length, and the newest policy version."""
        engine = self.trainer.engine
        return BatchLimits(engine.vocab_size, engine.max_len, self.status.policy_version)

    def admit(self, batch: Batch) -> Batch | None:
        """`batch` without the groups a training step cannot take (learner.admission), each logged and
        counted: PushRollouts refused them already, so these come from the in-learner pipeline."""
        kept, errors = keep_valid_groups(batch, self.limits())
        for err in errors:
            log.error("batch %s from %r: group dropped before training: %s", batch.batch_id, batch.producer, err)
        metrics.INVALID_GROUPS.inc(len(errors))
        return kept

    def report_skipped(self, batch: Batch, skipped: int, applied: int, values: dict[str, float]) -> None:
        """Counts and logs updates skipped for a non-finite loss or gradient; when the whole step was
        skipped (no new version), its record still goes to metrics.jsonl, under the current step."""
        metrics.SKIPPED_UPDATES.inc(skipped)
        log.warning("batch %s from %r: %d of %d updates skipped: non-finite loss or gradient (gradients dropped, "
                    "weights unchanged)", batch.batch_id, batch.producer, skipped, skipped + applied)
        if applied == 0:
            self._append_record({**values, "optimizer_updates": 0.0, "trained_tokens": 0.0})

    async def collect_rollouts(self) -> Batch | None:
        """The next batch, or None when a stop was requested while waiting."""
        self.status.state = "waiting_for_rollouts"
        fetch = asyncio.ensure_future(self.source.next_batch())
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait([fetch, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if fetch in done:
            return fetch.result()
        fetch.cancel()
        return None

    async def push_weights(self, force: bool = False) -> None:
        """Serialises the adapter once for this version; pushes it in the background when due."""
        self.status.state = "pushing"
        config_json, tensors = await asyncio.to_thread(self._mirrored, "adapter")
        self.status.adapter = await asyncio.to_thread(serialise_adapter, config_json, tensors,
                                                      self.status.policy_version, self.trainer.engine.base_model_id,
                                                      self.status.run_id)
        metrics.POLICY_VERSION.set(self.status.policy_version)
        due = force or self.status.step % self.config.push.push_every_steps == 0
        if due and self.config.generators:
            task = asyncio.ensure_future(self.pusher.push(self.status.adapter))
            self.status.pushes = [t for t in self.status.pushes if not t.done()] + [task]

    def log_step(self, values: dict[str, float]) -> None:
        """Appends the step's flat record to metrics.jsonl, sets Prometheus gauges, calls on_step."""
        record = self._append_record(values)
        metrics.STEPS.inc()
        metrics.UPDATES.inc(values.get("optimizer_updates", 0))
        metrics.TRAINED_TOKENS.inc(values.get("trained_tokens", 0))
        metrics.record_step(record)
        for callback in self.on_step:
            callback(record)

    def _append_record(self, values: dict[str, float]) -> dict[str, float]:
        record = {"step": self.status.step, "policy_version": self.status.policy_version, "time": time.time(),
                  **{k: float(v) for k, v in values.items()}}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def checkpoint(self) -> Path | None:
        """Writes a checkpoint of the current step (blocking; call from a worker thread)."""
        if self.status.adapter is None:
            return None
        state = TrainingState(self.status.step, self.status.policy_version, self.source.state_dict())
        path = self._mirrored("checkpoint", state, self.status.adapter)
        self._last_checkpoint = self.status.step
        metrics.CHECKPOINTS.inc()
        log.info("checkpoint %s", path)
        return path

    def resume(self) -> None:
        """Restores the newest checkpoint of run_dir (blocking)."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"checkpoint.resume: no checkpoint under {self.run_dir / 'checkpoints'}")
        state = self._mirrored("resume", str(path))
        self.source.load_state_dict(state.source)
        self.status.step = self._last_checkpoint = state.step
        self.status.policy_version = state.policy_version
        self.status.adapter = adapter_from_dir(path / "adapter", state.policy_version,
                                               self.trainer.engine.base_model_id, self.status.run_id)
        log.info("resumed from %s at step %d", path, state.step)

    async def finish(self) -> None:
        """Final checkpoint and adapter folder, last version pushed, pushes drained."""
        if self.status.adapter is not None:
            if self.status.step % self.config.push.push_every_steps != 0:
                await self.push_weights(force=True)
            if self.status.step != self._last_checkpoint:
                await asyncio.to_thread(self.checkpoint)
            await asyncio.to_thread(write_adapter_dir, self.status.adapter, self.run_dir / "adapter")
        await self.pusher.drain(self.config.push.timeout_seconds)
        await asyncio.to_thread(self._mirrored, "stop")
        self.status.state = "finished"

    def _mirrored(self, command: str, *args):
        """Runs one collective action here and, under the `deepspeed` launcher, on every other rank."""
        if self.trainer.engine.world_size > 1:
            torch.distributed.broadcast_object_list([(command, args)], src=0)
        return ACTIONS[command](self.trainer, self.config, *args)


def _checkpoint(trainer: Trainer, config: LearnerConfig, state: TrainingState, adapter: AdapterPayload | None):
    return save_checkpoint(Path(config.run_dir), trainer.engine, state, adapter, trainer.shuffle,
                           config.checkpoint.keep_last)


def _trim_metrics(path: Path, step: int) -> None:
    """Drops the records of steps after `step` from metrics.jsonl: a fresh run (step 0) starts an empty file
    rather than appending to an earlier run's curve, and a resumed run re-does the steps after its checkpoint."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def _resume(trainer: Trainer, config: LearnerConfig, path: str) -> TrainingState:
    return load_checkpoint(Path(path), trainer.engine, trainer.shuffle)


# What every rank does for each step of rank 0's loop (rank 0 calls these too, after broadcasting).
ACTIONS: dict[str, Callable] = {
    "train": lambda trainer, config, batch, version: trainer.train_step(batch, version),
    "adapter": lambda trainer, config: trainer.engine.adapter_state(),
    "checkpoint": _checkpoint,
    "resume": _resume,
    "stop": lambda trainer, config: None,
}


def follow(trainer: Trainer, config: LearnerConfig) -> None:
    """The loop of ranks > 0: repeat rank 0's collective actions until it stops (blocking)."""
    while True:
        message: list = [None]
        torch.distributed.broadcast_object_list(message, src=0)
        command, args = message[0]
        ACTIONS[command](trainer, config, *args)
        if command == "stop":
            return
