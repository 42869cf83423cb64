"""`rlfleet up --algo grpo|ppo` and --reward-model: the learner's algorithm table, the reward model, their checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from launcher.algorithms import algo_table, check_reward_model_option, reward_model_option, task_reward
from launcher.launch import Ports, cluster_tables
from launcher.up import UpConfig
from learner.config import LearnerConfig
from reward_server.config import RewardConfig
from rlfleet.config import ConfigError, load_config, to_toml


def _tables(tmp_path: Path, **options) -> dict:
    return cluster_tables(UpConfig(**options), "models/x", tmp_path, Ports.from_base(50100, 1), "models/rm")


def test_ppo_runs_as_grpo_once_its_algorithm_table_is_replaced(tmp_path):
    ppo = _tables(tmp_path, algo="ppo")
    learner = LearnerConfig.model_validate(ppo["learner"])
    assert learner.algo.needs_critic and learner.algo.advantage.lam == 0.95 and learner.updates_per_batch == 4
    swapped = copy.deepcopy(ppo)
    swapped["learner"]["algo"] = algo_table("grpo", 0.005)
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(swapped))
    grpo = load_config(LearnerConfig, ["--config", str(path)], environ={})
    assert grpo.algo.advantage.type == "grpo" and not grpo.algo.needs_critic
    assert grpo.algo.kl == learner.algo.kl and grpo.updates_per_batch == 4  # everything else is the same run
    # what --algo grpo writes differs from --algo ppo only in the algorithm and PPO's updates per batch
    plain = _tables(tmp_path, algo="grpo")
    changed = {k for k in ppo["learner"] if ppo["learner"].get(k) != plain["learner"].get(k)}
    assert changed == {"algo", "epochs_per_batch", "minibatches_per_batch"}
    assert {k for k in ppo if k != "learner" and ppo[k] != plain[k]} == set()


def test_the_reward_model_is_the_reward_and_the_script_stays_as_components(tmp_path):
    tables = _tables(tmp_path, algo="ppo")
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(tables))
    reward = load_config(RewardConfig, ["--config", str(path)], environ={})
    assert reward.model == Path("models/rm") and reward.model_weight == 1.0
    assert reward.reward == ["accuracy:0", "similarity:0"]
    # no reward model: the script's weights as given
    assert cluster_tables(UpConfig(), "m", tmp_path, Ports.from_base(50100, 1))["reward"]["reward"] == \
        ["accuracy:1.0", "similarity:0.5"]


def test_task_reward_from_components_by_hand():
    # 1.0 * 0.5 + 0.5 * 0.8 = 0.9; the reward model's own component does not count
    assert task_reward({"accuracy": 0.5, "similarity": 0.8, "rm": 2.0}, ["accuracy:1.0", "similarity:0.5"]) == 0.9
    assert task_reward({"accuracy": 0.5}, ["accuracy", "similarity:0.5"]) is None


def test_ppo_defaults_to_the_builtin_reward_model_only_where_there_are_builtin_pairs(tmp_path):
    assert reward_model_option(UpConfig(algo="ppo")) == "builtin"
    assert reward_model_option(UpConfig()) is None
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
