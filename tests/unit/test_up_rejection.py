"""`rlfleet up`'s algorithm table: GRPO plus rejection sampling's NLL on each group's best correct completions."""

from __future__ import annotations

from launcher.launch import learner_algo
from launcher.up import UpConfig
from learner.algos.config import AlgoConfig
from tasks.rewards import accuracy, similarity


def test_default_imitates_only_exact_answers():
    algo = AlgoConfig.model_validate(learner_algo(UpConfig()))
    assert algo.advantage.type == "grpo" and algo.kl.coef == 0.005
    assert (algo.rejection_sampling.coef, algo.rejection_sampling.top_fraction) == (1.0, 0.25)  # best 2 of 8
    # Default rewards accuracy:1 + similarity:0.5: an exact answer scores 1.5; the best wrong one of
    # `dcba` (3 of 4 positions right) scores 0 + 0.5 * 0.75 = 0.375, below the floor of 1.0.
    best_wrong = accuracy([""], ["dcbb"], answer=["dcba"])[0] + 0.5 * similarity([""], ["dcbb"], answer=["dcba"])[0]
    assert best_wrong == 0.375 < algo.rejection_sampling.min_reward <= 1.5


def test_zero_weight_is_plain_grpo():
    assert "rejection_sampling" not in learner_algo(UpConfig(rejection_sampling=0))


def test_environments_imitate_their_solved_trajectories():
    # the calculator's get_reward() is 1.0 for the exact value, 0.0 otherwise: the floor keeps solved ones only
    from tasks.calculator_env import Calculator

    algo = AlgoConfig.model_validate(learner_algo(UpConfig(env="builtin:calculator")))
    env = Calculator()
    env.reset(answer="2146")
    env.on_message("2164")
    assert env.get_reward() == 0.0 < algo.rejection_sampling.min_reward
    env.on_message("2146")
    assert env.get_reward() == algo.rejection_sampling.min_reward == 1.0
