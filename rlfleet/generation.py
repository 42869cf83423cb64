"""Domain types of the GeneratorService shared by the generator and its clients: prompts, sampling, info, loads.

The generator's servicer converts the wire to these and `rlfleet.clients.GeneratorClient` converts
these to the wire, so both sides speak one vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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


_TURN_KEYS = ("role", "content")


@dataclass(frozen=True)
class PromptInput:
    """One prompt as the caller sent it: exactly one of token_ids, text and messages is set."""

    prompt_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    messages: tuple[tuple[str, str], ...] = ()   # (role, content) turns

    @classmethod
    def from_dataset(cls, prompt_id: str, prompt: str | Sequence[Mapping[str, str]],
                     chat_template: bool = True) -> PromptInput:
        """A dataset's prompt: chat messages go as turns; text goes as one user turn (`chat_template`) or raw.

        The one place a dataset prompt becomes a Generate prompt, for training rollouts and held-out
        evaluation alike (evaluation once sent a chat-format prompt as the repr of its message list).
        """
        if isinstance(prompt, str):
            return cls(prompt_id, messages=(("user", prompt),)) if chat_template else cls(prompt_id, text=prompt)
        turns = []
        for i, message in enumerate(prompt):
            if not (isinstance(message, Mapping) and all(isinstance(message.get(k), str) for k in _TURN_KEYS)):
                raise ValueError(f"prompt {prompt_id!r}: message {i} must have string 'role' and 'content', "
                                 f"got {str(message)[:80]}")
            turns.append((message["role"], message["content"]))
        return cls(prompt_id, messages=tuple(turns))


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
