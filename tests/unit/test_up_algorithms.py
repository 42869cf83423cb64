"""`rlfleet up --algo grpo|ppo` and --reward-model: the learner's algorithm table, the reward model, their checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from launcher.algorithms import (
    PPO_KL_REWARD_COEF,
    check_reward_model_option,
    ppo_table,
    reward_model_option,
    reward_model_weight,
    task_reward,
    updates_per_batch,
)
from launcher.launch import Ports, cluster_tables, explained_variance_over_steps, learner_algo
from launcher.up import UpConfig
from learner.config import LearnerConfig
from reward_server.config import RewardConfig
from rlfleet.config import ConfigError, load_config, to_toml


def _tables(tmp_path: Path, reward_model: str | None = "models/rm", **options) -> dict:
    return cluster_tables(UpConfig(**options), "models/x", tmp_path, Ports.from_base(50100, 1), reward_model)


def test_algorithm_tables_by_hand(tmp_path):
    # grpo without a reward model: the demo's table (launch.learner_algo), rejection sampling included
    grpo = _tables(tmp_path, algo="grpo", reward_model=None)["learner"]["algo"]
    assert grpo == learner_algo(UpConfig()) and "rejection_sampling" in grpo
    # ppo: GAE on the critic, the KL as a per-token penalty in the reward (InstructGPT), the critic's settings;
    # with a reward model serving the reward, no rejection sampling (its floor is on the script's reward scale)
    assert _tables(tmp_path, algo="ppo")["learner"]["algo"] == {
        "kl": {"coef": PPO_KL_REWARD_COEF, "estimator": "k1", "mode": "reward"},
        "advantage": {"type": "gae", "gamma": 1.0, "lam": 0.95, "whiten": True},
        "value": {"lr": 2e-3, "warmup_steps": 3, "clip": 1.0, "coef": 0.5}}
    assert ppo_table(0.0)["kl"]["coef"] == 0  # --kl-coef 0: no KL, no reference service
    ppo = LearnerConfig.model_validate({"model": "m", "algo": ppo_table(0.005)}).algo
    assert ppo.needs_critic and ppo.needs_reference  # the penalty needs the reference's log-probs


def test_updates_per_batch_share_the_learning_rate(tmp_path):
    assert updates_per_batch(UpConfig(algo="ppo")) == (2, 2) and updates_per_batch(UpConfig()) == (1, 1)
    assert updates_per_batch(UpConfig(epochs_per_batch=3)) == (3, 1)
    # --lr 1e-3 is per rollout batch: PPO's 2 x 2 updates take 1e-3 / 4 = 2.5e-4 each; grpo's one update 1e-3
    assert _tables(tmp_path, algo="ppo")["learner"]["deepspeed"]["lr"] == 2.5e-4
    assert _tables(tmp_path, algo="grpo")["learner"]["deepspeed"]["lr"] == 1e-3
    assert "epochs_per_batch" not in _tables(tmp_path, algo="grpo")["learner"]


def test_grpo_with_ppos_updates_differs_from_ppo_in_the_algorithm_table_only(tmp_path):
    ppo = _tables(tmp_path, algo="ppo")
    grpo = _tables(tmp_path, algo="grpo", epochs_per_batch=2, minibatches_per_batch=2)
    assert {k for k in ppo if ppo[k] != grpo[k]} == {"learner"}
    assert {k for k in ppo["learner"] if ppo["learner"][k] != grpo["learner"].get(k)} == {"algo"}
    # and that table is all the learner reads of it: PPO's config with grpo's table runs GRPO
    swapped = copy.deepcopy(ppo)
    swapped["learner"]["algo"] = {"kl": {"coef": 0.005, "estimator": "k3", "mode": "loss"}}
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(swapped))
    learner = load_config(LearnerConfig, ["--config", str(path)], environ={})
    assert learner.algo.advantage.type == "grpo" and not learner.algo.needs_critic and learner.updates_per_batch == 4


def test_the_reward_model_is_the_reward_and_the_script_stays_as_components(tmp_path):
    tables = _tables(tmp_path, algo="ppo")
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(tables))
    reward = load_config(RewardConfig, ["--config", str(path)], environ={})
    assert reward.model == Path("models/rm") and reward.model_weight == 1.0  # no metrics.json there
    assert reward.reward == ["accuracy:0", "similarity:0"]
    # no reward model: the script's weights as given
    assert cluster_tables(UpConfig(), "m", tmp_path, Ports.from_base(50100, 1))["reward"]["reward"] == \
        ["accuracy:1.0", "similarity:0.5"]


def test_the_reward_model_is_scaled_to_unit_std(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"score_mean": 2.6, "score_std": 4.0}))
    assert reward_model_weight(str(tmp_path)) == 0.25  # scores of std 4 -> rewards of std 1
    (tmp_path / "metrics.json").write_text(json.dumps({"score_std": 0.0}))
    assert reward_model_weight(str(tmp_path)) == 1.0


def test_explained_variance_over_steps_by_hand():
    records = [{"step": s, "value_explained_variance": s / 100} for s in range(1, 61)]
    # mean over the 5 steps up to each mark: (0.01 + ... + 0.05) / 5 = 0.03, then 0.13, 0.28, 0.58
    assert explained_variance_over_steps(records) == {5: 0.03, 15: 0.13, 30: 0.28, 60: 0.58}
    assert explained_variance_over_steps([{"step": 1, "reward_mean": 0.5}]) is None  # no critic


def test_task_reward_from_components_by_hand():
    # 1.0 * 0.5 + 0.5 * 0.8 = 0.9; the reward model's own component does not count
    assert task_reward({"accuracy": 0.5, "similarity": 0.8, "rm": 2.0}, ["accuracy:1.0", "similarity:0.5"]) == 0.9
    assert task_reward({"accuracy": 0.5}, ["accuracy", "similarity:0.5"]) is None


def test_ppo_defaults_to_the_builtin_reward_model_only_where_there_are_builtin_pairs(tmp_path):
    assert reward_model_option(UpConfig(algo="ppo")) == "builtin"
    assert reward_model_option(UpConfig()) is None
    assert reward_model_option(UpConfig(algo="ppo", reward_model="none")) is None  # PPO on the script's rewards
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q"}\n')
    with pytest.raises(ConfigError, match="--reward-model builtin.*builtin:reverse only"):
        check_reward_model_option(UpConfig(algo="ppo", dataset=str(data)))
    with pytest.raises(ConfigError, match="--reward-model: .* not a Hugging Face model folder"):
        check_reward_model_option(UpConfig(algo="ppo", reward_model=str(tmp_path)))
    with pytest.raises(ConfigError, match="--reward-model: not with --env"):
        check_reward_model_option(UpConfig(algo="ppo", reward_model="builtin", env="builtin:calculator"))
    check_reward_model_option(UpConfig(algo="ppo"))  # builtin:reverse has pairs


def test_algo_option_is_checked():
    with pytest.raises(SystemExit, match="--algo"):
        load_config(UpConfig, ["--algo", "dpo"], environ={})
