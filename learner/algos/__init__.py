"""The learner's algorithms as pure functions: advantage estimators, policy losses, KL, aggregation, DAPO filters.

See README.md in this folder for the table of algorithms, formulas and papers.
"""

from learner.algos.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from learner.algos.aggregation import aggregate
from learner.algos.config import AlgoConfig
from learner.algos.dapo import filter_uniform_groups, overlong_mask
from learner.algos.gae import explained_variance, value_clip_frac, value_loss
from learner.algos.kl import kl_penalty
from learner.algos.loss import POLICY_LOSSES, policy_loss
from learner.algos.rejection_sampling import nll_loss, sft_mask, top_of_each_group
from learner.algos.tis import tis_weight
from learner.algos.types import (
    AdvantageInput,
    AdvantageOutput,
    PolicyLossInput,
    PolicyLossOutput,
    PolicyLossStats,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageInput",
    "AdvantageOutput",
    "AlgoConfig",
    "PolicyLossInput",
    "PolicyLossOutput",
    "PolicyLossStats",
    "aggregate",
    "compute_advantages",
    "explained_variance",
    "filter_uniform_groups",
    "kl_penalty",
    "nll_loss",
    "overlong_mask",
    "policy_loss",
    "sft_mask",
    "tis_weight",
    "top_of_each_group",
    "value_clip_frac",
    "value_loss",
]
