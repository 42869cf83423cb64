"""The generator's own domain types: tokenized prompts, engine outputs, completions, groups."""

from __future__ import annotations

from dataclasses import dataclass

from rlfleet.generation import PromptInput, Sampling
from rlfleet.outcomes import FinishReason


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
