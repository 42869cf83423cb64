"""Domain types of a Generate call: sampling settings, tokenized prompts, completions and groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one call, defaults already filled in (a subset of vLLM's SamplingParams)."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0               # 0 disables top-k
    min_p: float = 0.0           # 0 disables min-p
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    logprobs: bool = True


@dataclass(frozen=True)
class PromptInput:
    """One prompt as the caller sent it: exactly one of token_ids, text and messages is set."""

    prompt_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    messages: tuple[tuple[str, str], ...] = ()   # (role, content) turns


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt as fed to the model."""

    prompt_id: str
    prompt_ids: list[int]        # [P], P >= 1
    prompt_text: str


@dataclass
class Completion:
    """One sampled completion."""

    token_ids: list[int]         # [T]
    logprobs: list[float]        # [T] raw-distribution log-prob of each sampled token, or [] when not asked
    finish_reason: FinishReason
    text: str


@dataclass
class EngineOutput:
    """What an engine returns for one prompt: its n completions, in sample order."""

    completions: list[Completion]
    first_token_seconds: float | None = None   # time to first token, when the engine measures it


@dataclass
class GroupResult:
    """All completions of one prompt, produced by one policy version."""

    prompt_index: int
    prompt: TokenizedPrompt
    completions: list[Completion]
    policy_version: int


@dataclass(frozen=True)
class GenerateBatch:
    """A Generate call in domain terms."""

    prompts: list[PromptInput]
    sampling: Sampling
    policy_version: int | None = None   # None = newest; 0 = base model


@dataclass(frozen=True)
class LoadResult:
    """Outcome of loading an adapter."""

    policy_version: int
    load_seconds: float
    loaded_versions: list[int]


@dataclass(frozen=True)
class GeneratorInfo:
    """Description of the served model and the policy state."""

    model: str
    base_model_id: str
    tokenizer: str
    tokenizer_hash: str
    max_model_len: int
    vocab_size: int
    policy_version: int
    loaded_versions: list[int]
    max_lora_rank: int
    engine: str
    running_requests: int
    waiting_requests: int
