"""`rlfleet up`: the whole cluster as local processes from one config — the main job.

With no arguments it builds the tiny local model, warm-starts it on the built-in `reverse` task
(a visible, documented first phase: see launcher/warmstart.py), starts reward, reference and
generator services, measures the held-out reward, trains with the learner while printing progress,
measures the held-out reward again and leaves everything in the run directory:

    RUN_DIR/cluster.toml     the resolved config of every service (the compose files use the same tables)
    RUN_DIR/metrics.jsonl    one record per training step        RUN_DIR/logs/*.log   one log per service
    RUN_DIR/checkpoints/     resumable checkpoints                RUN_DIR/adapter/     the final PEFT adapter
    RUN_DIR/summary.json     reward and held-out reward before/after, wall time     RUN_DIR/training.png
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rlfleet.config import CommandConfig, load_config

log = logging.getLogger("launcher.up")

BUILTIN_MODEL = "builtin:tiny"
BUILTIN_REWARDS = ["accuracy:1.0", "similarity:0.5"]
CALCULATOR_WARMSTART_STEPS = 400  # the warm-start of --env builtin:calculator (see warmstart_tool_fraction)


class UpConfig(CommandConfig):
    """The local cluster: which model, task and rewards, how many generators, how long to train."""

    section: ClassVar[str] = "up"
    model: str = BUILTIN_MODEL
    """Model path or Hugging Face name; `builtin:tiny` builds the tiny local model and warm-starts it."""
    dataset: str = "builtin:reverse"
    """Prompts: `builtin:reverse`, `builtin:calculator` (with --env), `reasoning_gym:TASK`, or a local JSONL /
    Parquet / CSV file with a `prompt` column."""
    reward_script: Path | None = None
    """Reward script for the reward service; unset uses the built-in task's (tasks/rewards.py)."""
    reward: list[str] = BUILTIN_REWARDS
    """Reward functions of the script with weights, `name:weight`."""
    env: str | None = None
    """Multi-turn, tool-using rollouts against an environment service: `builtin:calculator` (its dataset and
    a warm-start that teaches its tool-call format come with it), or an environment script (TRL's
    environment_factory form). Its get_reward() is the reward; a --reward-script adds a reward service."""
    max_turns: int = Field(4, ge=1)
    """Model turns per trajectory with --env; a trajectory still calling tools after them ends truncated."""
    warmstart_tool_fraction: float = Field(0.15, ge=0, le=1)
    """With --env builtin:calculator: the fraction of warm-start conversations that call the tool (the
    rest answer straight away, i.e. guess); RL is left to find out that the tool pays. At 0.15 the greedy
    policy answers straight away (held-out tool-call rate 0.02, accuracy 0.02; sampled, 30% of trajectories
    call the tool) and RL turns it to the tool; at 0.5 the greedy policy called the tool on every prompt
    before RL began (held-out 0.72 -> 0.73: nothing left for RL to show there). Fewer tool conversations
    need more steps to teach the copying: with --env builtin:calculator the warm-start defaults to 400."""
    algo: Literal["grpo", "ppo"] = "grpo"
    """The learner's algorithm table: grpo, or ppo (a critic on its own LoRA adapter, GAE, PPO-clip, 2 epochs x 2
    mini-batches per batch); only that table differs (launcher/algorithms.py). ppo trains on a reward model."""
    reward_model: str | None = None
    """Reward model whose score is the reward (the script's --reward functions stay as weight-0 components, still
    reported): a folder from `rlfleet train-rm`, `builtin` (the default of --algo ppo on builtin:reverse) to
    train one on the task's preference pairs from the warm-started model, or `none` for the script's rewards."""
    reward_model_steps: int = Field(400, ge=1)
    """Training steps of the built-in reward model (32 preference pairs each; 400 take ~40 s on 2 idle cores)."""
    epochs_per_batch: int | None = Field(None, ge=1)
    """Passes over each rollout batch; unset: the algorithm's (grpo 1, ppo 2)."""
    minibatches_per_batch: int | None = Field(None, ge=1)
    """Optimiser updates per pass; unset: the algorithm's (grpo 1, ppo 2). With both set alike, --algo grpo and
    --algo ppo write configs that differ in the learner's algorithm table only."""
    generators: int = Field(1, ge=1, le=16)
    """Generator processes."""
    reference_service: bool = True
    """Start the reference service for the KL term (else the learner computes it in-process)."""
    kl_coef: float = Field(0.005, ge=0)
    """KL coefficient of grpo's k3 term in the loss (0 = no reference log-probs at all); --algo ppo puts its own
    per-token penalty in the reward instead (coefficient 0.05 on a reward of std 1), on while this is > 0."""
    steps: int = Field(150, ge=1)
    """Training steps (optimiser updates, one policy version each); 150 of the defaults take ~2.5 minutes on an idle
    2-core machine (bench/README.md, issue 17)."""
    group_size: int = Field(8, ge=2)
    """Completions per prompt."""
    prompts_per_batch: int = Field(16, ge=1)
    """Prompts per training step. 16, not 8: the rejection-sampling term learns from the groups that hold a
    correct completion, and the hard (long) prompts get one only now and then; a step cost ~1.3x as much."""
    max_tokens: int = Field(12, ge=1)
    """Maximum completion tokens."""
    max_staleness: int = Field(1, ge=0)
    """Policy versions a rollout may lag (0 = on-policy; 1 overlaps generation with training)."""
    lr: float = Field(1e-3, gt=0)
    """Learning rate of the LoRA adapter per rollout batch (LoRA wants ~10x full fine-tuning's; 2e-3 drifted to KL
    0.3 in 40 steps): the epochs x mini-batches updates of a batch share it (ppo: 4, each at lr / 4)."""
    lora_rank: int = Field(1, ge=1)
    """LoRA rank. RL needs little capacity, and vLLM's CPU LoRA path costs per token in proportion to the rank:
    one generation call of the demo took 0.44 CPU-s at rank 1 and 1.2 at rank 16, and held-out accuracy after
    60 steps was the same (0.28) at both (bench/README.md, issue 17)."""
    lora_alpha: float = Field(32.0, gt=0)
    """LoRA alpha, fixed across ranks (the update is scaled by alpha / rank): with alpha fixed, the best learning
    rate barely depends on the rank ("LoRA Without Regret", Thinking Machines 2025)."""
    rejection_sampling: float = Field(1.0, ge=0)
    """Weight of rejection sampling's NLL term (learner.algo.rejection_sampling: RAFT, Dong et al. 2023) on the best
    quarter of each group that scores at least --rejection-sampling-min-reward; 0 is plain GRPO. Plain GRPO
    stalled on the demo (held-out accuracy 0.20 -> 0.22-0.28 in 60-150 steps, at any lr): its step is mostly noise,
    while the few correct samples of the hard prompts are the signal; this term imitates them (bench/README.md)."""
    rejection_sampling_min_reward: float = 1.0
    """Least reward of a completion the NLL term imitates: 1.0 keeps only exact answers under the default rewards
    (accuracy 1 + 0.5 x similarity: a correct answer scores 1.5, a wrong one below 0.5)."""
    warmstart_steps: int = Field(130, ge=0)
    """Supervised warm-start steps of the built-in tiny model (ignored for other models); with --env
    builtin:calculator the default is 400 (at 130, 25% of tool conversations did not teach the copying:
    warm-start loss 1.1, held-out 0.03, no reward to learn from)."""
    eval_rows: int = Field(64, ge=0)
    """Held-out prompts evaluated before and after training (0 skips evaluation)."""
    eval_samples: int = Field(4, ge=0)
    """Besides the greedy held-out reward, the mean over this many samples per held-out prompt drawn as training
    draws them (mean@k; 0 skips it): what RL changes first is the distribution it samples from, which greedy
    decoding shows only once the most likely answer itself changes."""
    run_dir: Path | None = None
    """Run directory; default runs/<date-time>."""
    base_port: int = Field(50100, ge=1024, le=65000)
    """First gRPC port; services take the following ones, /metrics ports start at base_port + 1000."""
    health_timeout_seconds: float = Field(600.0, gt=0)
    """How long services may take to report SERVING."""
    progress: Literal["bar", "lines", "none"] = "bar"
    """Progress view: a live bar, one line per step, or nothing."""
    plot: bool = True
    """Write RUN_DIR/training.png at the end."""
    seed: int = 0
    """Seed of model building, sampling and training."""
    cpus: list[str] = []
    """CPU affinity per service as SERVICE=CPUS (generator, reward, reference, learner, environment; CPUS like 0, 0-3 or 0,2),
    e.g. `--cpus generator=0 learner=1`: on a small machine, keeps the services from taking each other's cores."""
    threads: list[str] = []
    """OpenMP / torch threads per service as SERVICE=N; default: the number of CPUs it is pinned to, else 2 for
    the generator and the learner and 1 for the reward and reference services."""

    @field_validator("cpus")
    @classmethod
    def _check_cpus(cls, entries: list[str]) -> list[str]:
        for name, value in _pairs(entries).items():
            parse_cpus(value, name)
        return entries

    @field_validator("threads")
    @classmethod
    def _check_threads(cls, entries: list[str]) -> list[str]:
        for name, value in _pairs(entries).items():
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value}: the number of threads must be a whole number >= 1")
        return entries

    @model_validator(mode="after")
    def _env_brings_its_dataset(self) -> UpConfig:
        # A built-in environment plays its own task's rows unless --dataset names others.
        if self.env is not None and self.env.startswith("builtin:") and "dataset" not in self.model_fields_set:
            self.dataset = self.env
        if self.env == "builtin:calculator" and "warmstart_steps" not in self.model_fields_set:
            self.warmstart_steps = CALCULATOR_WARMSTART_STEPS
        return self

    def placement(self, service: str) -> tuple[int, frozenset[int] | None]:
        """(threads, CPUs or None) of a service: generator, reward, reference or learner."""
        cpus = _pairs(self.cpus).get(service)
        pinned = parse_cpus(cpus, service) if cpus is not None else None
        default = len(pinned) if pinned else (2 if service in ("generator", "learner") else 1)
        return int(_pairs(self.threads).get(service, default)), pinned


SERVICES = ("generator", "reward", "reference", "learner", "environment")


def _pairs(entries: list[str]) -> dict[str, str]:
    """SERVICE=VALUE entries as a dict; an unknown service or a missing `=` raises ValueError naming the entry."""
    found = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or name not in SERVICES:
            raise ValueError(f"{entry!r}: expected SERVICE=VALUE with SERVICE one of {', '.join(SERVICES)}")
        found[name] = value
    return found


def parse_cpus(text: str, service: str) -> frozenset[int]:
    """`0`, `0-3` or `0,2-3` as a set of CPU numbers this process may use; ValueError naming the service otherwise."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(f"{service}={text}: expected CPU numbers like 0, 0-3 or 0,2") from None
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if not cpus or not cpus <= available:
        raise ValueError(f"{service}={text}: this machine offers CPUs {sorted(available)}")
    return frozenset(cpus)


def main(argv: list[str] | None = None) -> int:
    config = load_config(UpConfig, argv, prog="rlfleet up")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from launcher.checks import check_inputs
    from launcher.launch import run_cluster

    check_inputs(config)  # before anything starts: a bad input costs a second, not a warm-start and a start-up
    return run_cluster(config)


if __name__ == "__main__":
    from rlfleet.cli import run_command

    raise SystemExit(run_command("up", sys.argv[1:]))

