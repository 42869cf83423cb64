"""Configuration of the generator service: the `[generator]` table, `RLFLEET_*` variables and flags."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from rlfleet.config import ClientConfig, ServiceConfig

# vLLM's LoRA kernels are compiled for these ranks only (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class GeneratorConfig(ServiceConfig):
    """Serve rollouts from vLLM with hot-swapped LoRA adapters."""

    section: ClassVar[str] = "generator"

    model: str = Field(min_length=1)
    """Base model: a local Hugging Face folder or a hub name."""
    tokenizer: str | None = None
    """Tokenizer folder or name; unset uses the model's."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight and activation dtype; auto takes the model config's (CPU vLLM runs float32/bfloat16)."""
    max_model_len: int | None = Field(None, ge=16)
    """Maximum prompt + completion tokens; unset takes the model's maximum."""
    keep_versions: int = Field(2, ge=1, le=64)
    """K: adapter versions kept loaded (vLLM's max_loras); set it to max staleness + 1 so in-flight requests finish on their version."""
    max_lora_rank: int = 16
    """Highest LoRA rank accepted; vLLM supports 1, 8, 16, 32, 64, 128, 256, 320 and 512."""
    max_concurrent_requests: int = Field(256, ge=1)
    """Prompts (vLLM requests of n samples each) in flight at once; a Generate call past it gets RESOURCE_EXHAUSTED."""
    max_samples_per_prompt: int = Field(256, ge=1)
    """Largest `sampling.n` accepted."""
    default_max_tokens: int = Field(256, ge=1)
    """Completion tokens per sample when a request leaves sampling.max_tokens at 0."""
    engine: Literal["vllm", "transformers-fake"] = "vllm"
    """Generation backend: vllm is the product; transformers-fake is a slow fake for unit tests only, never for serving."""
    learner_address: str | None = None
    """Learner gRPC target (host:port or dns:///name:port); when set, the current adapter is pulled from it before SERVING."""
    learner_wait_seconds: float = Field(120.0, gt=0)
    """How long start-up keeps retrying the learner's GetPolicy before giving up (and exiting)."""
    learner_client: ClientConfig = ClientConfig()
    """Deadline, retries and auth of calls to the learner."""
    adapter_dir: Path | None = None
    """Folder where received adapters are written, one subfolder per version; unset uses a fresh temporary folder.
    A tmpfs (e.g. /dev/shm/...) is fastest: on a slow disk, writeback of a large adapter per push throttles the writer."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Fraction of accelerator memory vLLM may use (on the CPU, 0.1: vLLM measures the whole node's memory)."""
    kv_cache_space_gib: int | None = Field(None, ge=1)
    """CPU only: GiB reserved for the KV cache (sets VLLM_CPU_KVCACHE_SPACE); unset keeps vLLM's default."""
    enforce_eager: bool = False
    """Disable CUDA graphs / torch.compile (start-up time over throughput; needed on the CPU)."""
    enable_prefix_caching: bool = True
    """Share the KV cache of a prompt's prefix between the n samples of a group and across calls."""
    block_size: int | None = Field(None, ge=1)
    """KV-cache block size in tokens; unset: vLLM's default (16 on GPUs, 128 on the CPU). Prefixes are cached in
    whole blocks, so a multi-turn conversation shorter than a block re-prefills every turn (CPU: a multiple of 32)."""
    seed: int = 0
    """Engine seed (requests without their own seed draw from it)."""

    @field_validator("max_lora_rank")
    @classmethod
    def _check_rank(cls, rank: int) -> int:  # a field validator, so the error names --max-lora-rank
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(f"must be one of {VLLM_LORA_RANKS}")
        return rank
