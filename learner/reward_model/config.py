"""Config of `rlfleet train-rm`: base model, pairs, LoRA or full fine-tuning, DeepSpeed, schedule, output."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from learner.config import DeepSpeedSettings, LoraSettings
from rlfleet.config import CommandConfig


class TrainRewardModelConfig(CommandConfig):
    """`rlfleet train-rm`: trains a Bradley-Terry reward model on preference pairs and writes a Hugging Face folder."""

    section: ClassVar[str] = "train_rm"
    model: str = Field(min_length=1)
    """Model to start from: a local Hugging Face folder (a causal LM gets a new one-output score head)."""
    pairs: str = "builtin:reverse"
    """Preference pairs: builtin:NAME (the task's pairs ranked by its rule-based reward) or a .jsonl/.parquet
    file with prompt, chosen and rejected columns."""
    out: Path = Path("models/reward")
    """Folder written for `rlfleet reward-server --model`: the merged classifier, its tokenizer, metrics.json."""
    score: Literal["classifier", "mean_logprob"] = "classifier"
    """How the model scores a completion: a one-output score head on the last token (a sequence classifier), or
    the causal LM's mean log-probability of the completion's tokens (SimPO's implicit reward; rlfleet.reward_score).
    The Bradley-Terry loss is the same over either score; the reward server reads which from the folder."""
    method: Literal["lora", "full"] = "lora"
    """Train a LoRA adapter (merged into the weights at the end) or every weight; a classifier's score head is always
    trained in full."""
    lora: LoraSettings = LoraSettings()
    """The LoRA adapter when method = lora."""
    deepspeed: DeepSpeedSettings = DeepSpeedSettings(zero_stage=0)
    """DeepSpeed engine and optimiser (lr, warmup_steps, grad_clip, zero_stage, dtype, cpu_adam)."""
    epochs: int = Field(2, ge=1)
    """Passes over the training pairs."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps (unset: run every epoch)."""
    pairs_per_step: int = Field(16, ge=1)
    """Preference pairs per optimiser step (each pair is two sequences)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of the prompts whose pairs are held out to measure pairwise accuracy (split by prompt, not by pair)."""
    max_length: int = Field(512, ge=8)
    """Longest prompt + completion in tokens; longer pairs are dropped (and counted)."""
    seed: int = 0
    """Seed of the score head's init, the split and the shuffling."""
    log_every: int = Field(50, ge=1)
    """Print the running loss and accuracy every N steps."""
