"""Picks the advantage estimator named by AlgoConfig.advantage.type."""

from __future__ import annotations

from collections.abc import Callable

from learner.algos.config import AlgoConfig
from learner.algos.dr_grpo import dr_grpo_advantages
from learner.algos.gae import gae_advantages
from learner.algos.grpo import grpo_advantages
from learner.algos.reinforce_pp import reinforce_pp_advantages
from learner.algos.reinforce_pp_baseline import reinforce_pp_baseline_advantages
from learner.algos.rloo import rloo_advantages
from learner.algos.types import AdvantageInput, AdvantageOutput

# advantage.type -> estimator; each takes its own config model.
ADVANTAGE_ESTIMATORS: dict[str, Callable[[AdvantageInput, object], AdvantageOutput]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
    "gae": gae_advantages,
}


def compute_advantages(inp: AdvantageInput, config: AlgoConfig) -> AdvantageOutput:
    """Per-token advantages (and, for gae, value targets) of one whole batch.

    Call it once on the whole batch before splitting into mini-batches: group estimators need every
    completion of a group together, REINFORCE++ and GAE whitening normalise over the whole batch.
    """
    return ADVANTAGE_ESTIMATORS[config.advantage.type](inp, config.advantage)
