"""AlgoConfig: discriminated choices, cross-field rules, and flags through rlfleet's load_config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from learner.algos import AlgoConfig
from learner.algos.config import GAEAdvantage, GSPOLoss, RLOOAdvantage
from rlfleet.config import ServiceConfig, load_config


class _LearnerLike(ServiceConfig):
    """A service config embedding the algorithm, as the learner's does."""

    section = "learner"
    algo: AlgoConfig = AlgoConfig()
    """The algorithm."""


def test_defaults_are_grpo_ppo_clip_higher_token_mean_without_reference():
    config = AlgoConfig()
    assert (config.advantage.type, config.policy_loss.type, config.aggregation) == ("grpo", "ppo_clip", "token_mean")
    assert (config.policy_loss.clip_low, config.policy_loss.clip_high, config.tis.cap) == (0.2, 0.28, 2.0)
    assert not config.needs_reference and not config.needs_critic


def test_discriminator_picks_the_model():
    config = AlgoConfig.model_validate({"advantage": {"type": "rloo"}, "kl": {"coef": 0.01},
                                        "policy_loss": {"type": "gspo"}, "aggregation": "seq_mean_token_mean"})
    assert isinstance(config.advantage, RLOOAdvantage) and isinstance(config.policy_loss, GSPOLoss)
    assert config.policy_loss.clip_low == 3e-4 and config.needs_reference
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        AlgoConfig.model_validate({"advantage": {"type": "vapo"}})
    with pytest.raises(ValidationError, match="lam"):
        AlgoConfig.model_validate({"advantage": {"type": "rloo", "lam": 0.9}})  # a field of another estimator


@pytest.mark.parametrize(("data", "message"), [
    ({"aggregation": "seq_mean_token_sum"}, "seq_sum_normaliser"),
    ({"policy_loss": {"type": "gspo"}}, "seq_mean_token_mean"),
    ({"kl": {"coef": -0.1}}, "greater than or equal to 0"),
    ({"policy_loss": {"type": "ppo_clip", "dual_clip": 1.0}}, "greater than 1"),
    ({"policy_loss": {"type": "ppo_clip", "clip_low": 1.0}}, "less than 1"),
    ({"advantage": {"type": "dr_grpo"}}, "advantage.type 'dr_grpo' needs aggregation 'seq_mean_token_sum'.*token_mean"),
    ({"advantage": {"type": "dr_grpo"}, "aggregation": "seq_mean_token_mean"}, "got aggregation 'seq_mean_token_mean'"),
    ({"advantage": {"type": "reinforce_pp"}, "dapo": {"dynamic_sampling": True}},
     "dapo.dynamic_sampling.*advantage.type 'reinforce_pp'"),
    ({"advantage": {"type": "gae"}, "dapo": {"dynamic_sampling": True}}, "dapo.dynamic_sampling.*advantage.type 'gae'"),
])
def test_bad_combinations_are_rejected(data, message):
    with pytest.raises(ValidationError, match=message):
        AlgoConfig.model_validate(data)


def test_flags_and_environment_reach_the_algorithm():
    argv = ["--algo.advantage", '{"type": "gae", "lam": 0.9}', "--algo.kl.coef", "0.05",
            "--algo.aggregation", "seq_mean_token_sum", "--algo.seq-sum-normaliser", "1024"]
    config = load_config(_LearnerLike, argv, environ={"RLFLEET_ALGO__TIS__CAP": "3"}).algo
    assert isinstance(config.advantage, GAEAdvantage) and config.advantage.lam == 0.9
    assert (config.kl.coef, config.seq_sum_normaliser, config.tis.cap) == (0.05, 1024, 3)
    assert config.needs_reference and config.needs_critic


def test_a_variant_without_type_is_the_default_one():
    config = AlgoConfig.model_validate({"policy_loss": {"clip_high": 0.3}, "advantage": {"scale_by_std": False}})
    assert (config.policy_loss.type, config.policy_loss.clip_high) == ("ppo_clip", 0.3)
    assert (config.advantage.type, config.advantage.scale_by_std) == ("grpo", False)


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "reinforce_pp_baseline"])
def test_dynamic_sampling_is_accepted_where_equal_rewards_give_zero_advantage(advantage):
    # (the group-relative part is zero; REINFORCE++-baseline's whitening only shifts it by a batch constant)
    config = AlgoConfig.model_validate({"advantage": {"type": advantage}, "dapo": {"dynamic_sampling": True}})
    assert config.dapo.dynamic_sampling


def test_dr_grpo_with_its_constant_normaliser_is_accepted():
    config = AlgoConfig.model_validate({"advantage": {"type": "dr_grpo"}, "aggregation": "seq_mean_token_sum",
                                        "seq_sum_normaliser": 512, "dapo": {"dynamic_sampling": True}})
    assert config.advantage.type == "dr_grpo"
