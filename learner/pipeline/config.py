"""Config of the in-learner rollout pipeline: dataset, generators, reward services, reference, staleness."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlfleet.clients.resolve import split_target
from rlfleet.config import ConfigModel


def reject_renamed(data: object, where: str, renamed: dict[str, str]) -> object:
    """A `mode="before"` validator's body: an old key gets an error naming the key that replaced it."""
    if isinstance(data, dict):
        for old, new in renamed.items():
            if old in data:
                raise ValueError(f"{where}{old} was replaced by {new}")
    return data


class RewardServiceConfig(ConfigModel):
    """One reward service the pipeline calls; totals of several services combine by weight."""

    address: str
    """gRPC target of the reward service, e.g. `127.0.0.1:50061` or `dns:///reward:50051`."""
    weight: float = 1.0
    """Multiplier of this service's total reward in the sample's reward."""
    name: str = ""
    """Label of this service in metrics and logs; defaults to the address."""

    @field_validator("address")
    @classmethod
    def _is_target(cls, value: str) -> str:
        split_target(value)
        return value


class EnvironmentConfig(ConfigModel):
    """Multi-turn rollouts against an environment service (learner.pipeline.multiturn): limits per trajectory."""

    address: str
    """gRPC target of the environment service, e.g. `127.0.0.1:50081` or `dns:///env:50051`."""
    environment: str = ""
    """Environment to run; empty: the row's `environment` column, else the service's only one."""
    tool_call_format: Literal["json", "compact"] = "json"
    """How the model writes tool calls: `json` is <tool_call>{"name", "arguments"}</tool_call>; `compact` is
    name(argument), the tiny demo model's format (learner/pipeline/toolcalls.py)."""
    max_turns: int = Field(8, ge=1)
    """Model turns per trajectory; a trajectory that still acts after them ends truncated (reason `turns`)."""
    max_trajectory_tokens: int = Field(1024, ge=1)
    """Tokens after the first prompt (model turns and observations); past it the trajectory ends truncated
    (reason `tokens`). Each turn is still at most `source.max_tokens`."""
    max_trajectory_seconds: float = Field(300.0, gt=0)
    """Wall time of one trajectory; checked before each turn (reason `wall_time`)."""
    weight: float = 1.0
    """Multiplier of the environment's reward (its get_reward()) in the sample's reward."""
    timeout_seconds: float = Field(120.0, gt=0)
    """Deadline of one environment call; give more than the service's call timeout."""
    retry_seconds: float = Field(60.0, gt=0)
    """How long a call is retried while the service is unavailable; then the rows go back to the queue."""

    @field_validator("address")
    @classmethod
    def _is_target(cls, value: str) -> str:
        split_target(value)
        return value


class PipelineConfig(ConfigModel):
    """Generate -> score -> reference log-probs -> batch, inside the learner process."""

    type: Literal["pipeline"] = "pipeline"
    dataset: str = "builtin:reverse"
    """Prompts: a local JSONL / Parquet / CSV file, `builtin:NAME` for a synthetic task (see tasks), or
    `reasoning_gym:TASK` for a reasoning-gym task (score it with the built-in reward `reasoning_gym`)."""
    prompt_column: str = "prompt"
    """Dataset column holding the prompt text (or a list of chat messages)."""
    answer_column: str = "answer"
    """Dataset column passed to rewards as the gold answer (other columns pass through too)."""
    chat_template: bool = True
    """Render prompts with the model's chat template (a user turn plus the generation prompt)."""
    rewards: list[RewardServiceConfig] = [RewardServiceConfig(address="127.0.0.1:50061")]
    """Reward services scoring every completion (of a multi-turn trajectory: its last model turn)."""
    environment: EnvironmentConfig | None = None
    """Roll out multi-turn trajectories against this environment service (tool calls, observations) instead
    of single completions; its reward adds to the reward services'."""
    reference: str | None = None
    """gRPC target of the reference service, needed when learner.reference = 'service' and the KL is on."""
    group_size: int = Field(8, ge=1)
    """Completions sampled per prompt (the GRPO group)."""
    prompts_per_batch: int = Field(8, ge=1)
    """Prompt groups in one training batch."""
    max_tokens: int = Field(64, ge=1)
    """Maximum completion tokens (with an environment: of one model turn)."""
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    """Sampling temperature; 0 (greedy) only with group_size 1."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    stop: list[str] = []
    """Stop strings."""
    max_staleness: int = Field(1, ge=0)
    """How many pushed policy versions a rollout may lag the learner (0 = the newest pushed one: strictly
    on-policy when every step is pushed); with learner.push.push_every_steps N, at most max_staleness + N - 1 steps."""
    prompts_per_request: int | None = Field(None, ge=1)
    """Prompts sent in one Generate call; unset: a whole batch per call, split evenly over the generators that
    are up (few, large calls let vLLM batch every sequence at once)."""
    max_inflight_requests: int = Field(16, ge=1)
    """Generate calls kept in flight across all generators."""
    generate_in_order: bool = True
    """Start a batch's generation only once the previous batch's has finished. Batches generated at once
    share the engine and finish together, in a burst the learner then trains while the generators wait
    for the version the next batch needs; in order, the learner trains one batch while the next generates.
    Admission (max_staleness) still decides how far ahead a batch may start."""
    max_items_per_score_call: int = Field(1024, ge=1)
    """Most completions sent in one Score call; groups finished together are scored together up to it."""
    reward_failure_policy: Literal["drop_group", "zero"] = "drop_group"
    """A sample whose reward status is not OK: drop its whole group (counted), or train on it with reward 0 (counted)."""
    generate_timeout_seconds: float = Field(300.0, gt=0)
    """Deadline of one Generate call; on expiry its prompts go to another generator."""
    reward_timeout_seconds: float = Field(60.0, gt=0)
    """Deadline of one Score call."""
    reference_timeout_seconds: float = Field(60.0, gt=0)
    """Deadline of one reference LogProbs call."""
    version_wait_seconds: float = Field(30.0, gt=0)
    """How long a generator may take to serve the version a request needs; past it, the prompts go elsewhere."""
    retry_backoff_seconds: float = Field(1.0, gt=0)
    """Wait before retrying a failed call (a down reward service pauses the pipeline)."""
    seed: int = 0
    """Seed of prompt order and per-request sampling seeds."""
    eval_split_fraction: float = Field(0.0, ge=0, lt=1)
    """Fraction of the dataset held out for evaluation (never trained on)."""
    dropped_log: Path | None = None
    """JSONL file listing every dropped prompt with its reason; defaults to RUN_DIR/dropped.jsonl."""

    @field_validator("reference")
    @classmethod
    def _is_target(cls, value: str | None) -> str | None:
        if value is not None:
            split_target(value)
        return value

    @model_validator(mode="after")
    def _turns_need_the_template(self) -> PipelineConfig:
        # Multi-turn rollouts render every turn with the chat template; there is no raw-text form of a conversation.
        if self.environment is not None and not self.chat_template:
            raise ValueError("source.chat_template: must be true with source.environment (turns are rendered "
                             "with the model's chat template)")
        return self

    @model_validator(mode="after")
    def _groups_can_differ(self) -> PipelineConfig:
        # Greedy samples of one prompt are identical, so every GRPO advantage is 0: a run that trains
        # nothing (and the generator refuses n > 1 at temperature 0 anyway).
        if self.temperature == 0 and self.group_size > 1:
            raise ValueError(f"source.temperature: 0 (greedy) gives source.group_size = {self.group_size} identical "
                             "completions per prompt, so every advantage is 0; set a temperature > 0 (e.g. 1.0) "
                             "or source.group_size = 1")
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        return reject_renamed(data, "source.", {
            "generators": "generators (learner.generators: one list for rollouts and weight pushes)",
            "client": "client (learner.client: one client config for every call the learner makes)"})
