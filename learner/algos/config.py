"""Config of the learner's algorithm: advantage estimator, policy loss, KL, aggregation, TIS, critic, DAPO, rejection sampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from rlfleet.config import ConfigModel


def _type_or(default: str) -> Callable[[Any], str | None]:
    """Discriminator that reads `type` and falls back to the default choice, so a file or flag may set
    only a field (`clip_high = 0.3`) of the default variant."""

    def pick(value: Any) -> str | None:
        return value.get("type", default) if isinstance(value, dict) else getattr(value, "type", None)

    return pick


class GRPOAdvantage(ConfigModel):
    """GRPO: reward minus the group mean, divided by the group std (Shao et al. 2024)."""

    type: Literal["grpo"] = "grpo"
    scale_by_std: bool = True
    """Divide by the group's (Bessel-corrected) reward std; false gives Dr.GRPO's advantage."""
    eps: float = Field(1e-6, ge=0)
    """Added to the group std before dividing, so a group of equal rewards gets advantage 0."""


class DrGRPOAdvantage(ConfigModel):
    """Dr.GRPO: reward minus the group mean, no std (Liu et al. 2025); pair with aggregation=seq_mean_token_sum."""

    type: Literal["dr_grpo"] = "dr_grpo"


class RLOOAdvantage(ConfigModel):
    """RLOO: reward minus the mean of the other completions of the same prompt (Ahmadian et al. 2024)."""

    type: Literal["rloo"] = "rloo"


class ReinforcePPAdvantage(ConfigModel):
    """REINFORCE++: undiscounted return, normalised over the whole batch of tokens (Hu 2025)."""

    type: Literal["reinforce_pp"] = "reinforce_pp"
    eps: float = Field(1e-8, ge=0)
    """Added to the batch std before dividing."""


class ReinforcePPBaselineAdvantage(ConfigModel):
    """REINFORCE++-baseline: reward minus the group mean, then normalised over the whole batch of tokens (Hu et al. 2025)."""

    type: Literal["reinforce_pp_baseline"] = "reinforce_pp_baseline"
    eps: float = Field(1e-8, ge=0)
    """Added to the batch std before dividing."""


class GAEAdvantage(ConfigModel):
    """PPO with a critic: generalised advantage estimation (Schulman et al. 2016)."""

    type: Literal["gae"] = "gae"
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount per token."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda: 0 = one-step TD error, 1 = Monte-Carlo return minus value."""
    whiten: bool = True
    """Normalise the advantages over the batch's masked tokens (returns are computed before this)."""
    eps: float = Field(1e-8, ge=0)
    """Added to the batch std when whitening."""


AdvantageConfig = Annotated[
    Annotated[GRPOAdvantage, Tag("grpo")]
    | Annotated[DrGRPOAdvantage, Tag("dr_grpo")]
    | Annotated[RLOOAdvantage, Tag("rloo")]
    | Annotated[ReinforcePPAdvantage, Tag("reinforce_pp")]
    | Annotated[ReinforcePPBaselineAdvantage, Tag("reinforce_pp_baseline")]
    | Annotated[GAEAdvantage, Tag("gae")],
    Discriminator(_type_or("grpo")),
]


class PPOClipLoss(ConfigModel):
    """PPO clipped surrogate per token (Schulman et al. 2017) with DAPO's clip-higher and optional dual clip."""

    type: Literal["ppo_clip"] = "ppo_clip"
    clip_low: float = Field(0.2, ge=0, lt=1)
    """Lower clip: the ratio is clipped at 1 - clip_low."""
    clip_high: float = Field(0.28, ge=0)
    """Upper clip: the ratio is clipped at 1 + clip_high (DAPO's clip-higher uses 0.28 > clip_low)."""
    dual_clip: float | None = Field(None, gt=1)
    """Dual clip constant c (Ye et al. 2020, e.g. 3.0): for negative advantages the loss is capped at c*|A|."""


class GSPOLoss(ConfigModel):
    """GSPO: the clipped surrogate on the sequence-level, length-normalised ratio (Zheng et al. 2025)."""

    type: Literal["gspo"] = "gspo"
    clip_low: float = Field(3e-4, ge=0, lt=1)
    """Lower clip of the sequence ratio: 1 - clip_low (the paper's 3e-4)."""
    clip_high: float = Field(4e-4, ge=0)
    """Upper clip of the sequence ratio: 1 + clip_high (the paper's 4e-4)."""


PolicyLossConfig = Annotated[
    Annotated[PPOClipLoss, Tag("ppo_clip")] | Annotated[GSPOLoss, Tag("gspo")],
    Discriminator(_type_or("ppo_clip")),
]


class KLConfig(ConfigModel):
    """KL to the reference model."""

    coef: float = Field(0.0, ge=0)
    """Weight of the KL; 0 turns it off and no reference log-probs are requested."""
    estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token estimator of KL(policy || reference) (Schulman 2020)."""
    mode: Literal["loss", "reward"] = "loss"
    """'loss': add coef*KL to the per-token loss; 'reward': the engine folds -coef*KL into token_rewards."""


class TISConfig(ConfigModel):
    """Truncated importance sampling between the generator's and the learner's log-probs (Yao et al. 2025)."""

    cap: float | None = Field(2.0, gt=0)
    """Truncate the weight exp(old_logprobs - behaviour_logprobs) at this value; unset disables TIS."""


class ValueConfig(ConfigModel):
    """PPO critic (GAE only): its loss, learning rate and warm-up (learner/critic.py)."""

    clip: float = Field(0.2, gt=0)
    """New values are clipped to old_values +- clip in the second term of the value loss."""
    coef: float = Field(0.5, ge=0)
    """Weight of the value loss in the total loss."""
    lr: float | None = Field(None, gt=0)
    """Learning rate of the critic's LoRA adapter and value head; unset: the policy's deepspeed.lr."""
    warmup_steps: int = Field(0, ge=0)
    """First training steps that train only the critic (no policy loss), so GAE starts from fitted values."""


class DAPOConfig(ConfigModel):
    """DAPO's batch filters (Yu et al. 2025)."""

    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (zero advantage) and sample more until the batch is full."""
    overlong_filter: bool = False
    """Exclude truncated completions (finish_reason = length) from the loss."""


class RejectionSamplingConfig(ConfigModel):
    """Rejection sampling: the best completions of each group become supervised data for an NLL term."""

    coef: float = Field(0.0, ge=0)
    """Weight of the NLL term on the kept completions in the total loss; 0 turns rejection sampling off."""
    top_fraction: float = Field(0.2, gt=0, le=1)
    """Fraction of each group kept: the ceil(top_fraction * group size) highest rewards."""
    min_reward: float | None = None
    """A kept completion must also score at least this (unset: no floor), so all-wrong groups give no target."""


# Estimators under which a group whose rewards are all equal still gets a non-zero advantage:
# REINFORCE++ has no group baseline (only the batch whitening), GAE's baseline is the critic.
# GRPO, Dr.GRPO, RLOO centre on the group (exactly 0); REINFORCE++-baseline centres on the group
# before whitening, which only shifts such a group by the batch mean.
NONZERO_FOR_EQUAL_REWARDS = frozenset({"reinforce_pp", "gae"})

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]


class AlgoConfig(ConfigModel):
    """The learner's algorithm, one choice per step of the math."""

    advantage: AdvantageConfig = GRPOAdvantage()
    """Advantage estimator, chosen by `type`: grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline or gae."""
    policy_loss: PolicyLossConfig = PPOClipLoss()
    """Policy loss, chosen by `type`: ppo_clip or gspo."""
    kl: KLConfig = KLConfig()
    """KL to the reference model."""
    aggregation: Aggregation = "token_mean"
    """How per-token losses become one scalar (Dr.GRPO: seq_mean_token_sum; GSPO: seq_mean_token_mean)."""
    seq_sum_normaliser: float | None = Field(None, gt=0)
    """Constant divisor of each sequence's token sum under seq_mean_token_sum (Dr.GRPO: max_tokens); required for it."""
    tis: TISConfig = TISConfig()
    """Truncated importance sampling against the generator's log-probs."""
    value: ValueConfig = ValueConfig()
    """Critic loss; used with the gae advantage only."""
    dapo: DAPOConfig = DAPOConfig()
    """DAPO's dynamic sampling and overlong filtering."""
    rejection_sampling: RejectionSamplingConfig = RejectionSamplingConfig()
    """NLL on the top completions of each group, added to the loss (off while its coef is 0)."""

    @model_validator(mode="after")
    def _check_pairings(self) -> AlgoConfig:
        if self.aggregation == "seq_mean_token_sum" and self.seq_sum_normaliser is None:
            raise ValueError("aggregation 'seq_mean_token_sum' needs seq_sum_normaliser (e.g. max_tokens)")
        # GSPO's objective is a mean over sequences of a sequence-level term; any other mean changes it.
        if self.policy_loss.type == "gspo" and self.aggregation != "seq_mean_token_mean":
            raise ValueError("policy_loss 'gspo' needs aggregation 'seq_mean_token_mean'")
        # Dr.GRPO is the centred advantage AND a constant length normaliser; with any other aggregation
        # it is GRPO without the std, and the length bias the paper removes is back.
        if self.advantage.type == "dr_grpo" and self.aggregation != "seq_mean_token_sum":
            raise ValueError(f"advantage.type 'dr_grpo' needs aggregation 'seq_mean_token_sum' (with "
                             f"seq_sum_normaliser = max_tokens), got aggregation '{self.aggregation}'")
        if self.dapo.dynamic_sampling and self.advantage.type in NONZERO_FOR_EQUAL_REWARDS:
            raise ValueError(
                f"dapo.dynamic_sampling drops groups of equal rewards as having zero advantage, but "
                f"advantage.type '{self.advantage.type}' gives them a non-zero one; use grpo, dr_grpo, rloo or "
                f"reinforce_pp_baseline, or set dapo.dynamic_sampling = false")
        return self

    @property
    def needs_reference(self) -> bool:
        """Whether reference log-probs must be requested at all (false when kl.coef == 0)."""
        return self.kl.coef > 0

    @property
    def needs_critic(self) -> bool:
        """Whether the learner must train a value head (the gae advantage)."""
        return self.advantage.type == "gae"
