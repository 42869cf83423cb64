"""Configuration of `rlfleet reward-server` (TOML table [reward], RLFLEET_* variables, flags)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from rlfleet.config import ServiceConfig
from rlfleet.workers.limits import LimitsConfig

REWARD_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<weight>[-+0-9.eE]+))?$")


def parse_reward(spec: str) -> tuple[str, float]:
    """"accuracy:1.0" -> ("accuracy", 1.0); "accuracy" -> ("accuracy", 1.0)."""
    match = REWARD_SPEC.match(spec)
    if not match:
        raise ValueError(f"{spec!r} is not NAME or NAME:WEIGHT")
    return match["name"], float(match["weight"] or 1.0)


class RewardConfig(ServiceConfig):
    """Serves Python reward scripts, built-in rewards and/or a reward model over gRPC."""

    section = "reward"

    script: Path | None = None
    """Python file with reward functions f(prompts, completions, **columns) or f(prompt, completion, **columns)."""
    reward: list[str] = []
    """Components as NAME:WEIGHT (a script function or a built-in); empty = every function of the script, weight 1."""
    model: Path | None = None
    """Folder of a reward model: a sequence classifier (transformers AutoModelForSequenceClassification, one label), or
    a causal LM whose config.json says `"rlfleet_reward_score": "mean_logprob"` (`rlfleet train-rm --score mean_logprob`)."""
    model_name: str = Field("model", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Component name of the reward model's score."""
    model_weight: float = 1.0
    """Weight of the reward model's score in the total."""
    model_max_batch_tokens: int = Field(8192, ge=16)
    """Token budget of one reward-model forward pass (padded length times batch size)."""
    workers: int = Field(2, ge=1, le=256)
    """Worker processes running reward code."""
    item_timeout_seconds: float = Field(10.0, gt=0)
    """Deadline of one item (and of one whole batch-form call); past it the worker is killed and replaced."""
    max_batch_items: int = Field(1024, ge=1)
    """Most items sent to one worker in one call. A request is split evenly over the workers up to this size:
    each call costs a pipe round trip and two thread hand-offs (~0.3 ms of server CPU) whatever its size."""
    max_queued_items: int = Field(4096, ge=1)
    """Items accepted and not yet scored; past it Score answers RESOURCE_EXHAUSTED at once."""
    dedupe_cache_size: int = Field(1024, ge=0)
    """Recent request_ids whose response is kept, so a retried call is not scored twice."""
    metrics_window: int = Field(1000, ge=1)
    """Items per component in the rolling mean published as rlfleet_reward_component_mean."""
    limits: LimitsConfig = LimitsConfig()
    """Resource limits of each worker process."""
    check: Path | None = None
    """Dry run: score this script on the rows of --sample, print the scores and exit (no server)."""
    sample: Path | None = None
    """JSONL rows for --check: prompt, completion, optional reference/answer and other columns."""
    check_rows: int = Field(5, ge=1)
    """Rows of --sample scored by --check."""

    @field_validator("reward")
    @classmethod
    def _rewards_parse(cls, value: list[str]) -> list[str]:
        names = [parse_reward(spec)[0] for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"a reward is named twice: {names}")
        return value

    @model_validator(mode="after")
    def _something_to_serve(self) -> RewardConfig:
        if self.check is not None:
            if self.sample is None:
                raise ValueError("--check needs --sample FILE.jsonl")
            return self
        if self.script is None and not self.reward and self.model is None:
            raise ValueError("give --script, --reward NAME[:WEIGHT] (built-ins) or --model")
        if self.model is not None and self.model_name in {parse_reward(s)[0] for s in self.reward}:
            raise ValueError(f"model_name {self.model_name!r} is also a --reward name")
        return self

    def weights(self) -> list[tuple[str, float]]:
        """(name, weight) of every --reward, in order."""
        return [parse_reward(spec) for spec in self.reward]
