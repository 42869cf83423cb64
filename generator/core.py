"""The generator's real work, without gRPC: admit and run Generate calls, hot-swap adapters, describe itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from generator import metrics
from generator.config import GeneratorConfig
from generator.engines import Engine, EngineRequest, make_engine
from generator.policy import BaseModelShapes, LoadedVersion, PolicyVersions, check_adapter
from generator.prompts import PromptRenderer
from generator.rollouts import GenerateBatch, GroupResult, TokenizedPrompt
from rlfleet.adapters import (
    WEIGHTS_FILE,
    AdapterPayload,
    base_model_id,
    keep_as_spare,
    resolve_model_dir,
    write_adapter_dir,
)
from rlfleet.errors import InvalidRequest, Overloaded, Rejected
from rlfleet.generation import GeneratorInfo, LoadResult, Sampling

log = logging.getLogger(__name__)


class Generator:
    """Serves rollouts from one engine and keeps its policy versions (LoRA adapters) current."""

    def __init__(self, config: GeneratorConfig, engine: Engine, prompts: PromptRenderer, model_id: str,
                 shapes: BaseModelShapes, adapter_dir: Path, owns_adapter_dir: bool = False):
        self.config = config
        self.engine = engine
        self.prompts = prompts
        self.base_model_id = model_id
        self.shapes = shapes
        self.adapter_dir = adapter_dir
        self.staging_dir = adapter_dir / ".incoming"
        """Where LoadAdapter spools weights while they arrive (same file system: moved, never copied)."""
        self._owns_adapter_dir = owns_adapter_dir   # a temporary folder made for this process: removed at shutdown
        self.versions = PolicyVersions(config.keep_versions)
        self._tokenizer_hash = prompts.tokenizer_hash
        self._in_flight = 0
        self._adapter_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        metrics.RUNNING.set_function(lambda: self.engine.stats().running)
        metrics.WAITING.set_function(lambda: self.engine.stats().waiting)
        metrics.POLICY_VERSION.set(0)

    @classmethod
    async def create(cls, config: GeneratorConfig) -> Generator:
        """Starts the engine named in the config and loads the tokenizer (the slow part of start-up)."""
        def read_model_files():   # blocking file reads: kept off the event loop like the engine start
            from transformers import AutoTokenizer

            model_dir = resolve_model_dir(config.model)
            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
            return tokenizer, base_model_id(model_dir), BaseModelShapes.from_dir(model_dir)

        engine = await make_engine(config)
        tokenizer, model_id, shapes = await asyncio.to_thread(read_model_files)
        adapter_dir = config.adapter_dir or Path(tempfile.mkdtemp(prefix="rlfleet-adapters-"))
        prompts = PromptRenderer(tokenizer, engine.vocab_size, engine.max_model_len)
        return cls(config, engine, prompts, model_id, shapes, adapter_dir, owns_adapter_dir=config.adapter_dir is None)

    # -- Generate ----------------------------------------------------------------------------------

    async def generate(self, batch: GenerateBatch) -> AsyncIterator[GroupResult]:
        """Yields one GroupResult per prompt as soon as its n samples are done (not in request order).

        Closing the iterator early (the caller cancelled) aborts every engine request still running.
        """
        if not batch.prompts:
            raise InvalidRequest("prompts", "must hold at least one prompt")
        self._check_sampling(batch.sampling)
        prompts = [self.prompts.render(i, p) for i, p in enumerate(batch.prompts)]
        self._admit(len(prompts))
        try:
            adapter = self.versions.acquire(batch.policy_version)
        except BaseException:
            self._leave(len(prompts))
            raise
        call_id = uuid.uuid4().hex[:12]
        tasks = {asyncio.ensure_future(self._run_group(f"{call_id}-{i}", i, p, batch.sampling, adapter)): i
                 for i, p in enumerate(prompts)}
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                # Cancelling the tasks already aborts them in vLLM; this explicit abort also covers
                # requests whose cancellation has not reached the engine yet.
                await asyncio.shield(self.engine.abort([f"{call_id}-{tasks[t]}" for t in pending]))
            self._leave(len(prompts))
            self.versions.release(adapter)
            self._retire_soon()

    def _check_sampling(self, s: Sampling) -> None:
        checks = (
            ("sampling.n", 1 <= s.n <= self.config.max_samples_per_prompt, f"must be in [1, {self.config.max_samples_per_prompt}]"),
            ("sampling.max_tokens", 1 <= s.max_tokens < self.engine.max_model_len, f"must be in [1, {self.engine.max_model_len})"),
            ("sampling.temperature", math.isfinite(s.temperature) and s.temperature >= 0,
             f"must be finite and >= 0 (0 is greedy), got {s.temperature}"),
            # Greedy decoding has one answer per prompt: n copies of it would be a GRPO group with no spread.
            ("sampling.n", s.n == 1 or s.temperature > 0, f"n = {s.n} needs temperature > 0 (0 is greedy: "
             "every sample would be the same)"),
            ("sampling.top_p", 0 < s.top_p <= 1, "must be in (0, 1]"),
            ("sampling.top_k", s.top_k >= 0, "must be >= 0 (0 disables it)"),
            ("sampling.min_p", 0 <= s.min_p <= 1, "must be in [0, 1]"),
            ("sampling.min_tokens", s.min_tokens <= s.max_tokens, "must not exceed max_tokens"),
            ("sampling.stop", all(s.stop), "stop strings must not be empty"),
            ("sampling.stop_token_ids", all(t < self.engine.vocab_size for t in s.stop_token_ids),
             f"every id must be < vocabulary size {self.engine.vocab_size}"),
        )
        for field, ok, problem in checks:
            if not ok:
                raise InvalidRequest(field, problem)

    def _admit(self, count: int) -> None:
        limit = self.config.max_concurrent_requests
        if count > limit:
            raise InvalidRequest("prompts", f"{count} prompts exceed max_concurrent_requests={limit}; split the call")
        if self._in_flight + count > limit:
            metrics.REQUESTS.labels("rejected").inc(count)
            raise Overloaded(f"generator busy: {self._in_flight} of {limit} prompts in flight, {count} more asked")
        self._in_flight += count
        metrics.IN_FLIGHT.set(self._in_flight)

    def _leave(self, count: int) -> None:
        self._in_flight -= count
        metrics.IN_FLIGHT.set(self._in_flight)

    async def _run_group(self, request_id: str, index: int, prompt: TokenizedPrompt, sampling: Sampling,
                         adapter: LoadedVersion) -> GroupResult:
        # The model's length bounds the completion: a longer ask ends with finish_reason "length".
        room = self.engine.max_model_len - len(prompt.prompt_ids)
        sampling = dataclasses.replace(sampling, max_tokens=min(sampling.max_tokens, room),
                                       min_tokens=min(sampling.min_tokens, room))
        start = time.perf_counter()
        try:
            output = await self.engine.generate(EngineRequest(request_id, prompt.prompt_ids, sampling, adapter.adapter_id))
        except asyncio.CancelledError:
            metrics.REQUESTS.labels("aborted").inc()
            raise
        except Exception:
            metrics.REQUESTS.labels("failed").inc()
            raise
        metrics.REQUESTS.labels("finished").inc()
        metrics.REQUEST_LATENCY.observe(time.perf_counter() - start)
        metrics.PROMPT_TOKENS.inc(len(prompt.prompt_ids))
        if output.first_token_seconds is not None:
            metrics.TIME_TO_FIRST_TOKEN.observe(output.first_token_seconds)
        for completion in output.completions:
            metrics.TOKENS_GENERATED.inc(len(completion.token_ids))
            metrics.COMPLETIONS.labels(completion.finish_reason).inc()
        return GroupResult(index, prompt, output.completions, adapter.version)

    # -- Adapters ----------------------------------------------------------------------------------

    async def load_adapter(self, payload: AdapterPayload, received_at: float) -> LoadResult:
        """Verifies, writes and loads an adapter as the newest version; the previous one serves if it fails.

        `received_at` is the perf_counter time of the adapter's first chunk. A version is immutable:
        re-sending a loaded version of the serving run is acknowledged without reloading only when it
        is the same adapter (checksum and base model), and refused otherwise. The first version of
        another learner run is loaded whatever its number, and the old run's versions are dropped.
        """
        version, nbytes, digest = payload.policy_version, payload.nbytes, payload.checksum  # the file moves below
        async with self._adapter_lock:
            loaded = self.versions.find(payload.run_id, version)
            if loaded is not None:
                self._check_same(loaded, payload, digest)
                return LoadResult(version, time.perf_counter() - received_at, self.versions.loaded)
            marks = [time.perf_counter()]
            try:
                self._check_new(payload)
                entry = self.versions.new_entry(payload.run_id, version, digest, payload.base_model_id)
                # Not fsynced: after a crash the generator pulls the current adapter from the learner again.
                path = await asyncio.to_thread(write_adapter_dir, payload, self.adapter_dir / entry.folder,
                                               durable=False)
                marks.append(time.perf_counter())
                try:
                    await self.engine.load_adapter(entry.adapter_id, path)
                except Rejected:
                    shutil.rmtree(path, ignore_errors=True)
                    raise
            except Rejected:
                metrics.ADAPTER_LOADS.labels("rejected").inc()
                raise
            marks.append(time.perf_counter())
            previous_run = self.versions.run_id
            dropped = self.versions.add(entry)
        if dropped:
            log.warning("learner run %r replaces run %r: its versions %s no longer serve new requests",
                        payload.run_id, previous_run, dropped)
        # The new version serves from here on; the tidy-up runs after the reply, because under load
        # vLLM handles it between engine steps and it took seconds (it does not change what is served).
        self._tidy_soon(version)
        seconds = time.perf_counter() - received_at
        metrics.ADAPTER_LOADS.labels("loaded").inc()
        metrics.ADAPTER_LOAD_TIME.observe(seconds)
        metrics.ADAPTER_BYTES.inc(nbytes)
        metrics.POLICY_VERSION.set(version)
        log.info("policy v%d serving, %.3f s from first chunk: receive+verify %.3f, check+write %.3f, engine load %.3f "
                 "(%d bytes)", version, seconds, marks[0] - received_at, marks[1] - marks[0],
                 marks[2] - marks[1], nbytes)
        return LoadResult(version, seconds, self.versions.loaded)

    @staticmethod
    def _check_same(loaded: LoadedVersion, payload: AdapterPayload, digest: str) -> None:
        """A re-sent version must be the adapter already loaded under that number."""
        differ = [f"{name} {ours!r} != {theirs!r}" for name, ours, theirs in (
            ("header.xxh3_128", loaded.checksum, digest), ("header.base_model_id", loaded.base_model_id,
                                                            payload.base_model_id)) if ours != theirs]
        if differ:
            metrics.ADAPTER_LOADS.labels("rejected").inc()
            raise Rejected(f"header.policy_version: version {loaded.version} of learner run {loaded.run_id!r} is "
                           f"already loaded with other weights ({'; '.join(differ)}); a version is immutable: "
                           "push a new version number")

    def _check_new(self, payload: AdapterPayload) -> None:
        # An empty run_id is proto3's default: a hand push (bench/, an older client) that names no run.
        # It may serve while no learner run does, but read as "another run" it would replace the
        # learner's and bar that run's later pushes as those of a replaced run.
        if not payload.run_id and self.versions.run_id:
            raise Rejected(f"header.run_id: empty, and this generator serves learner run {self.versions.run_id!r}; "
                           "an adapter without a run id cannot replace a learner's run: send the run's id "
                           "(the learner logs it at start)")
        if payload.run_id in self.versions.replaced_runs:
            raise Rejected(f"header.run_id: learner run {payload.run_id!r} was replaced by run "
                           f"{self.versions.replaced_runs[payload.run_id]!r}; its adapters are no longer taken")
        if payload.run_id == self.versions.run_id and payload.policy_version < self.versions.newest:
            raise Rejected(f"header.policy_version: {payload.policy_version} is older than the serving "
                           f"version {self.versions.newest}")
        check_adapter(payload, self.base_model_id, self.shapes, self.config.max_lora_rank)

    async def _retire(self) -> None:
        """Unloads versions outside the K newest, or of an earlier learner run, that no request uses any more."""
        for entry in self.versions.retirable():
            self.versions.remove(entry)
            await self.engine.unload_adapter(entry.adapter_id)
            folder = self.adapter_dir / entry.folder
            keep_as_spare(folder / WEIGHTS_FILE, self.staging_dir)  # the next push writes over its pages
            shutil.rmtree(folder, ignore_errors=True)
            log.info("unloaded policy v%d of run %r", entry.version, entry.run_id)
        metrics.LOADED_VERSIONS.set(self.versions.engine_count)

    def _tidy_soon(self, version: int) -> None:
        """In the background: reset the prefix cache and unload versions no request needs any more."""
        async def run() -> None:
            async with self._adapter_lock:
                # vLLM keys cached blocks by adapter too, so this is hygiene rather than correctness: it
                # frees blocks of the old policy at once instead of leaving them to LRU eviction.
                if not await self.engine.reset_prefix_cache():
                    log.debug("prefix cache not reset after v%d: requests are running", version)
                await self._retire()

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _retire_soon(self) -> None:
        async def run() -> None:
            async with self._adapter_lock:
                await self._retire()

        if self.versions.retirable():
            task = asyncio.ensure_future(run())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- Info --------------------------------------------------------------------------------------

    def info(self) -> GeneratorInfo:
        stats = self.engine.stats()
        return GeneratorInfo(
            model=self.config.model, base_model_id=self.base_model_id,
            tokenizer=self.config.tokenizer or self.config.model, tokenizer_hash=self._tokenizer_hash,
            max_model_len=self.engine.max_model_len, vocab_size=self.engine.vocab_size,
            policy_version=self.versions.newest, loaded_versions=self.versions.loaded,
            max_lora_rank=self.config.max_lora_rank, engine=self.engine.name,
            running_requests=stats.running, waiting_requests=stats.waiting)

    def shutdown(self) -> None:
        self.engine.shutdown()
        if self._owns_adapter_dir:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
