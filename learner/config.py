"""Config of the learner: model, LoRA, DeepSpeed, batching, algorithm, reference, push, checkpoints, source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from learner.algos.config import AlgoConfig
from learner.pipeline.config import PipelineConfig, reject_renamed
from rlfleet.clients.resolve import split_target
from rlfleet.config import ClientConfig, ConfigModel, ServiceConfig


class LoraSettings(ConfigModel):
    """The PEFT LoRA adapter that is trained (the base model stays frozen)."""

    r: int = Field(16, ge=1, le=256)
    """LoRA rank (1-32 is enough for RL, per Thinking Machines' "LoRA Without Regret")."""
    alpha: float = Field(32.0, gt=0)
    """LoRA alpha; the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input during training."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Names of the linear modules that get an adapter (all attention and MLP projections by default)."""


class DeepSpeedSettings(ConfigModel):
    """DeepSpeed engine, optimiser and learning-rate schedule."""

    zero_stage: int = Field(2, ge=0, le=3)
    """ZeRO stage: 0 = plain data parallel, 1/2 = shard optimiser state/gradients, 3 = shard parameters too."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Training precision of the model (bf16 keeps fp32 master weights in the optimiser)."""
    cpu_adam: bool = False
    """Use DeepSpeed's CPU Adam (and offload the optimiser state to the CPU under ZeRO >= 1)."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate. LoRA needs ~10x the full fine-tuning rate; 1e-3 moves a rank-16 adapter in a few steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (0: decaying a LoRA update towards zero only pulls it back to the base model)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    warmup_steps: int = Field(0, ge=0)
    """Optimiser updates over which the learning rate rises linearly from 0 to lr."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning rate after warm-up: constant, or cosine decay to 0 at the last update of max_steps."""

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("both betas must be in [0, 1)")
        return value


class PushSettings(ConfigModel):
    """How often and how new adapter versions are pushed (to every address of learner.generators)."""

    push_every_steps: int = Field(1, ge=1)
    """Push after every k-th training step (the last step is always pushed). The pipeline counts
    source.max_staleness in pushed versions, so rollouts lag by up to max_staleness + k - 1 steps."""
    timeout_seconds: float = Field(60.0, gt=0)
    """Deadline of one LoadAdapter call; a late generator catches up later or through GetPolicy."""
    chunk_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Size of one streamed adapter slice in bytes."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        return reject_renamed(data, "push.", {
            "generators": "generators (learner.generators: one list for rollouts and weight pushes)"})


class CheckpointSettings(ConfigModel):
    """Training checkpoints (adapter, optimiser, scheduler, RNG, step, policy version, data cursor)."""

    every_steps: int = Field(50, ge=1)
    """Write a checkpoint after every N training steps (and always on SIGTERM and at the end)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk; older ones are deleted after a new one is complete."""
    resume: bool = False
    """Continue from the newest checkpoint in RUN_DIR/checkpoints (an error when there is none)."""


class PushSourceConfig(ConfigModel):
    """Rollouts arrive through the PushRollouts RPC from any external producer."""

    type: Literal["push"] = "push"
    """Selects this source: `push` (the other choice, `pipeline`, generates rollouts in-process)."""
    max_queued_batches: int = Field(8, ge=1)
    """Batches waiting to be trained on; PushRollouts answers RESOURCE_EXHAUSTED beyond it."""
    remembered_batch_ids: int = Field(100_000, ge=1)
    """How many recent batch ids are remembered to ignore re-sent batches."""


SourceConfig = Annotated[PipelineConfig | PushSourceConfig, Field(discriminator="type")]


class LearnerConfig(ServiceConfig):
    """`rlfleet learner`: trains a LoRA adapter with DeepSpeed on rollouts and pushes it to the generators."""

    section: ClassVar[str] = "learner"
    model: str = Field(min_length=1)
    """Base model: a local Hugging Face folder or a hub name (required)."""
    run_dir: Path = Path("runs/learner")
    """Folder of this run: checkpoints/, metrics.jsonl, adapter/ (the final PEFT adapter)."""
    max_steps: int = Field(100, ge=1)
    """Training steps; one step trains on one rollout batch (epochs_per_batch x minibatches_per_batch updates)."""
    seed: int = 0
    """Seed of parameter init, dropout and mini-batch shuffling."""
    lora: LoraSettings = LoraSettings()
    """The LoRA adapter."""
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    """DeepSpeed engine and optimiser."""
    micro_batch_tokens: int = Field(4096, ge=1)
    """Token budget of one forward/backward (padded rows x length); gradients accumulate over micro-batches."""
    epochs_per_batch: int = Field(1, ge=1)
    """Passes over each rollout batch."""
    minibatches_per_batch: int = Field(1, ge=1)
    """Optimiser updates per pass over a rollout batch (the batch's samples are split evenly)."""
    logprob_chunk_size: int = Field(4096, ge=1)
    """Vocabulary chunk of the selective log-prob kernel (memory vs. speed)."""
    fused_loss: bool = True
    """Compute PPO-clip with the fused loss kernel (Triton on CUDA, its PyTorch twin on the CPU); off uses learner.algos."""
    algo: AlgoConfig = AlgoConfig()
    """Advantage estimator, policy loss, KL, aggregation, TIS, DAPO filters."""
    reference: Literal["in_process", "service"] = "in_process"
    """Where reference log-probs come from: the adapter-disabled model here, or the rollouts (reference service)."""
    generators: list[str] = ["127.0.0.1:50051"]
    """Generator targets for rollouts and weight pushes alike; `dns:///name:port` stands for every replica behind it."""
    push: PushSettings = PushSettings()
    """Adapter pushes to generators."""
    checkpoint: CheckpointSettings = CheckpointSettings()
    """Checkpoints and resume."""
    source: SourceConfig = PipelineConfig()
    """Where rollouts come from: `pipeline` (generate in-process) or `push` (the PushRollouts RPC)."""
    client: ClientConfig = ClientConfig()
    """Default deadline, retries, auth and TLS of every call the learner makes (generators, rewards, reference)."""

    @field_validator("generators")
    @classmethod
    def _are_targets(cls, value: list[str]) -> list[str]:
        for target in value:
            split_target(target)
        return value

    @model_validator(mode="after")
    def _check_pipeline_needs(self) -> LearnerConfig:
        if self.source.type == "pipeline" and not self.generators:
            raise ValueError("generators: the pipeline source needs at least one generator address")
        if self.needs_reference_service and self.source.type == "pipeline" and not self.source.reference:
            raise ValueError("source.reference: learner.reference = 'service' with a KL term needs the reference "
                             "service's address")
        return self

    @property
    def needs_reference_service(self) -> bool:
        """Rollouts carry reference log-probs from the reference service: the KL term is on and not in-process."""
        return self.algo.needs_reference and self.reference == "service"

    @property
    def updates_per_batch(self) -> int:
        """Optimiser updates taken for one rollout batch."""
        return self.epochs_per_batch * self.minibatches_per_batch
