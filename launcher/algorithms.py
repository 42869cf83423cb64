"""`rlfleet up --algo grpo|ppo`: the learner's algorithm table, and the reward model PPO is trained against.

Only the `[learner.algo]` table differs between the two algorithms: a cluster.toml written for PPO
runs GRPO once that table is replaced by GRPO's, and the other way round (the learner builds the
critic from the table). The epochs x mini-batches updates per rollout batch are set outside it (ppo
2 x 2, grpo 1 x 1, or --epochs-per-batch / --minibatches-per-batch for both alike).

`--reward-model DIR` (or `builtin`, the default of `--algo ppo` on the built-in task: trained here on
the task's preference pairs by `rlfleet train-rm`, from the warm-started model, as RLHF trains its
reward model from the SFT model) makes the reward service serve that model's score as the reward.
The script's `--reward` functions stay in the service with weight 0: their components are still
reported, so the task's own reward is measured on the held-out prompts whatever the policy trains on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from launcher.up import BUILTIN_MODEL, UpConfig
from rlfleet.config import ConfigError

BUILTIN = "builtin"
# Optimiser updates per rollout batch under --algo ppo: PPO reuses each batch (Schulman et al. 2017
# use several epochs of mini-batches); a learner-level setting, shared by whichever table runs.
PPO_EPOCHS_PER_BATCH = 2
PPO_MINIBATCHES_PER_BATCH = 2
PPO_KL_REWARD_COEF = 0.05
RM_COMPONENT = "rm"  # the reward model's component name in the reward service
RM_BASE_EXTRA_STEPS = 300  # warm-start steps added for the reward model's base
# How the built-in reward model is trained (besides --model, --out, --max-steps): the Bradley-Terry loss over the
# converged SFT model's mean log-probability of the completion (SimPO's implicit reward, rlfleet.reward_score),
# every weight, whole prompts' pairs per step. Why not a score head: measured on 150 training prompts x 8 samples
# of the warm-started policy (bench/README.md, issue 20), a sequence classifier from the same base (held-out
# built-in pairs 0.920 after 800 steps, 0.953 after 3,000) ranks only 0.71 of the pairs of the policy's own
# samples right, and PPO climbed its errors (held-out 0.572 -> 0.558); the mean log-probability ranks 0.964
# of them right (1.000 -> 0.998 on the held-out built-in pairs in 400 steps, 40 s), and PPO on it raised the
# held-out reward (0.572 -> 0.689 in 60 steps).
RM_TRAIN_ARGS = ["--score", "mean_logprob", "--method", "full", "--deepspeed.lr", "2e-4", "--pairs-per-step", "32"]


def ppo_table(kl_coef: float) -> dict:
    """What `--algo ppo` sets in the learner's `algo` table over grpo's (launch.learner_algo): KL, advantage, critic."""
    # GAE with gamma 1 on an outcome reward, lambda 0.95 and whitened advantages (as OpenRLHF's PPO);
    # the critic trains alone for 3 steps so the first policy updates get fitted baselines, at 2e-3,
    # the rate that took the critic's value loss 0.157 -> 0.033 in 8 steps on a fixed batch
    # (tests/unit/learner/test_critic.py); value clip 1.0. On the demo the critic learns the batch mean
    # and no more (explained variance ~0 at value lr 2e-3, 5e-4 and 2e-4 alike; why: bench/README.md).
    # The KL as InstructGPT's per-token penalty in the reward, r_t -= beta * log(pi / pi_ref) (Ouyang et al.
    # 2022, eq. 2; Ziegler et al. 2019), on the reward model's score scaled to std 1 (reward_model_weight); on
    # whenever --kl-coef is (it also decides whether the reference service runs). Measured with the built-in
    # reward model: held-out 0.572 -> 0.505 with k3 0.005 in the loss on raw scores, -> 0.558 with this
    # penalty at 0.05, -> 0.559 at 0.2.
    kl = {"coef": PPO_KL_REWARD_COEF if kl_coef > 0 else 0.0, "estimator": "k1", "mode": "reward"}
    return {"kl": kl, "advantage": {"type": "gae", "gamma": 1.0, "lam": 0.95, "whiten": True},
            "value": {"lr": 2e-3, "warmup_steps": 3, "clip": 1.0, "coef": 0.5}}


def reward_model_option(config: UpConfig) -> str | None:
    """What --reward-model resolves to: None (also for `none`: the script's rewards), `builtin`, or a folder."""
    if config.reward_model is None and config.algo == "ppo" and config.env is None:
        return BUILTIN
    return None if config.reward_model == "none" else config.reward_model


def check_reward_model_option(config: UpConfig) -> None:
    """ConfigError naming the options when the reward model cannot be had."""
    option = reward_model_option(config)
    if option is None:
        return
    if config.env is not None:
        raise ConfigError("--reward-model: not with --env (the environment's get_reward() is the reward)")
    if option == BUILTIN and config.dataset != "builtin:reverse":
        raise ConfigError(f"--reward-model builtin (the default of --algo {config.algo}): built-in preference pairs "
                          f"exist for builtin:reverse only, not --dataset {config.dataset}; "
                          "train one with `rlfleet train-rm` and pass --reward-model DIR")
    if option != BUILTIN and not (Path(option) / "config.json").is_file():
        raise ConfigError(f"--reward-model: {option} is not a Hugging Face model folder (no config.json)")


def prepare_reward_model(config: UpConfig, model: str, run_dir: Path) -> tuple[str | None, float]:
    """The reward-model folder to serve; for `builtin`, trains one from `model` with `rlfleet train-rm`
    in its own process (DeepSpeed stays out of this one), its log in RUN_DIR/logs/train-rm.log."""
    option = reward_model_option(config)
    if option != BUILTIN:
        return option, 0.0
    out, log_path = run_dir / "models" / "reward", run_dir / "logs" / "train-rm.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = reward_model_base(config, model, run_dir)
    print(f"phase 1b   reward model: Bradley-Terry on builtin:reverse preference pairs, {config.reward_model_steps} "
          f"steps (log {log_path})", flush=True)
    argv = [sys.executable, "-m", "rlfleet.cli", "train-rm", "--model", base, "--pairs", "builtin:reverse",
            "--out", str(out), *RM_TRAIN_ARGS, "--max-steps", str(config.reward_model_steps), "--seed", str(config.seed)]
    with open(log_path, "w") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
    lines = log_path.read_text().splitlines()
    if code != 0:
        raise ConfigError(f"--reward-model builtin: rlfleet train-rm failed (exit {code}); end of {log_path}:\n"
                          + "\n".join(lines[-15:]))
    accuracy = next((line for line in lines if line.startswith("held-out accuracy")), "held-out accuracy n/a")
    print(f"           done in {time.perf_counter() - start:.0f}s, {' '.join(accuracy.split())}", flush=True)
    return str(out), time.perf_counter() - start


def reward_model_base(config: UpConfig, model: str, run_dir: Path) -> str:
    """The model the built-in reward model starts from: the warm-started policy, warm-started further.

    RLHF trains its reward model from the converged SFT model; the policy's warm-start is kept short on
    purpose (RL has to do the rest), so the reward model's base continues it to a converged one
    (130 + 300 steps: loss 0.40 -> 0.03 on the tiny model).
    """
    if config.model != BUILTIN_MODEL or config.warmstart_steps == 0:
        return model
    from launcher.warmstart import warm_start
    from learner.pipeline.dataset import builtin_rows

    rows, _ = builtin_rows("reverse", seed=1234 + config.seed)
    print(f"phase 1b   reward model's base: {RM_BASE_EXTRA_STEPS} more warm-start steps (a converged SFT model)",
          flush=True)
    result = warm_start(model, run_dir / "models" / "reward-base", rows, RM_BASE_EXTRA_STEPS, seed=config.seed + 1)
    print(f"           done in {result.seconds:.0f}s, final loss {result.final_loss:.3f}", flush=True)
    return str(result.path)


def apply_algorithm(tables: dict, config: UpConfig, reward_model: str | None) -> None:
    """Writes --algo's entries of the learner's algo table, the updates per batch and the reward model into the tables."""
    learner = tables["learner"]
    if reward_model is not None:
        # rejection sampling's floor (--rejection-sampling-min-reward) is on the script's reward scale, not a
        # reward model's; the runs of bench/README.md (issue 20) trained both algorithms without it
        learner["algo"].pop("rejection_sampling", None)
    if config.algo == "ppo":
        learner["algo"] = {**learner["algo"], **ppo_table(config.kl_coef)}
    epochs, minibatches = updates_per_batch(config)
    if epochs * minibatches > 1:
        learner["epochs_per_batch"], learner["minibatches_per_batch"] = epochs, minibatches
        # --lr is per rollout batch: the updates share it. Measured with PPO on the script's rewards: at
        # 1e-3 per update the KL reached 1.9 and held-out fell 0.572 -> 0.471; at 2.5e-4, 0.572 -> 0.616.
        learner["deepspeed"] = {**learner["deepspeed"], "lr": config.lr / (epochs * minibatches)}
    if reward_model is not None:
        reward = tables["reward"]
        reward.update(model=reward_model, model_name=RM_COMPONENT, model_weight=reward_model_weight(reward_model),
                      reward=[f"{spec.split(':', 1)[0]}:0" for spec in reward["reward"]])


def updates_per_batch(config: UpConfig) -> tuple[int, int]:
    """(epochs, mini-batches) per rollout batch: the options where set, else the algorithm's."""
    epochs, minibatches = (PPO_EPOCHS_PER_BATCH, PPO_MINIBATCHES_PER_BATCH) if config.algo == "ppo" else (1, 1)
    return config.epochs_per_batch or epochs, config.minibatches_per_batch or minibatches


def reward_model_weight(folder: str) -> float:
    """1 / the std of the reward model's held-out scores (train-rm's metrics.json), so the policy's reward has
    std ~1 whatever the model (InstructGPT normalises its reward model too); 1 when the folder does not say."""
    metrics = Path(folder) / "metrics.json"
    std = json.loads(metrics.read_text()).get("score_std") if metrics.is_file() else None
    return 1.0 / std if isinstance(std, float) and std > 0 else 1.0


def task_reward(components: dict[str, float], rewards: list[str]) -> float | None:
    """The script's own weighted reward from its components (None when one is missing), e.g. the
    held-out reward of the task while a reward model is what the policy trains on."""
    total = 0.0
    for spec in rewards:
        name, _, weight = spec.partition(":")
        if name not in components:
            return None
        total += float(weight or 1.0) * components[name]
    return total

