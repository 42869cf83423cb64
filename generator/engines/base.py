"""The generation backend interface: what the generator core needs from an engine, and nothing more."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from generator.rollouts import EngineOutput
from rlfleet.generation import Sampling


@dataclass(frozen=True)
class EngineRequest:
    """One prompt's worth of work: n samples of the same prompt ids, on one adapter."""

    request_id: str
    prompt_ids: list[int]          # [P]
    sampling: Sampling
    adapter_id: int = 0            # the generator's id of a loaded adapter (not a policy version); 0 = base model


@dataclass(frozen=True)
class EngineStats:
    """Scheduler counters, as of the engine's last step."""

    running: int = 0
    waiting: int = 0


class Engine(ABC):
    """A generation backend with LoRA adapters loaded and unloaded by id.

    The ids are the generator's (generator.policy.LoadedVersion.adapter_id): unique in the process and
    never reused, so two learner runs' adapters of the same policy version never share one.
    """

    name: str
    max_model_len: int
    vocab_size: int

    @abstractmethod
    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Runs one prompt's n samples to the end; cancelling the awaiting task aborts them."""

    @abstractmethod
    async def abort(self, request_ids: list[str]) -> None:
        """Stops requests still running; unknown or finished ids are ignored."""

    @abstractmethod
    async def load_adapter(self, adapter_id: int, path: Path) -> None:
        """Loads the PEFT folder at `path` as adapter `adapter_id`; raises Rejected if the engine refuses it."""

    @abstractmethod
    async def unload_adapter(self, adapter_id: int) -> None:
        """Frees adapter `adapter_id`; no request may use it any more."""

    @abstractmethod
    async def reset_prefix_cache(self) -> bool:
        """Drops cached prefixes (after a policy change); False when the engine could not do it now."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """Running and waiting requests."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stops the engine and its worker processes."""
