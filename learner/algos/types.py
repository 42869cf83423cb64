"""Typed inputs and outputs of the learner's advantage estimators and policy losses."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


def _check_shape(name: str, tensor: Tensor | None, shape: tuple[int, ...]) -> None:
    if tensor is not None and tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(tensor.shape)}")


@dataclass(frozen=True)
class AdvantageInput:
    """One scored batch of completions, right-padded to T tokens."""

    rewards: Tensor  # [B] total (weighted) reward per completion
    group_ids: Tensor  # [B] long; completions of the same prompt share an id
    mask: Tensor  # [B, T] float; 1 on completion tokens that are trained on
    token_rewards: Tensor | None = None  # [B, T] extra per-token rewards (e.g. -beta*KL); None = 0
    values: Tensor | None = None  # [B, T] critic values (GAE only)

    def __post_init__(self) -> None:
        if self.mask.dim() != 2:
            raise ValueError(f"mask: expected [B, T], got shape {list(self.mask.shape)}")
        batch, _ = self.mask.shape
        _check_shape("rewards", self.rewards, (batch,))
        _check_shape("group_ids", self.group_ids, (batch,))
        _check_shape("token_rewards", self.token_rewards, tuple(self.mask.shape))
        _check_shape("values", self.values, tuple(self.mask.shape))

    def sequence_rewards(self) -> Tensor:
        """rewards plus the masked sum of token_rewards: the outcome reward of each completion.  # [B]

        Group estimators (GRPO, Dr.GRPO, RLOO) see a KL folded into the reward this way, as verl does.
        """
        if self.token_rewards is None:
            return self.rewards
        return self.rewards + (self.token_rewards * self.mask).sum(-1)  # [B]


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: Tensor  # [B, T]; 0 where mask == 0
    returns: Tensor | None = None  # [B, T] value targets (GAE only)


@dataclass(frozen=True)
class PolicyLossInput:
    """One (micro-)batch of trained tokens; every tensor is [B, T] and right-padded."""

    logprobs: Tensor  # [B, T] current policy log-probs (requires grad)
    old_logprobs: Tensor  # [B, T] learner's log-probs at the start of this update (detached)
    behaviour_logprobs: Tensor  # [B, T] generator's (vLLM) log-probs of the same tokens (detached), for TIS
    advantages: Tensor  # [B, T]
    mask: Tensor  # [B, T] float
    ref_logprobs: Tensor | None = None  # [B, T] reference log-probs; needed when the KL is in the loss
    num_tokens: float | None = None
    """Token normaliser over the WHOLE mini-batch, so micro-batch losses sum to the mini-batch loss; None = mask.sum()."""
    num_sequences: float | None = None
    """Sequence normaliser over the whole mini-batch; None = rows of this batch with at least one masked token."""
    entropy: Tensor | None = None  # [B, T] per-token policy entropy (detached); only reported, never in the loss

    def __post_init__(self) -> None:
        shape = tuple(self.mask.shape)
        if len(shape) != 2:
            raise ValueError(f"mask: expected [B, T], got shape {list(shape)}")
        for name in ("logprobs", "old_logprobs", "behaviour_logprobs", "advantages", "ref_logprobs", "entropy"):
            _check_shape(name, getattr(self, name), shape)


@dataclass(frozen=True)
class ClipTerms:
    """What a clipped surrogate (PPO, GSPO) hands to `policy_loss`: the loss before TIS, KL and aggregation."""

    pg_loss: Tensor  # [B, T] per-token policy-gradient loss
    ratio: Tensor  # [B, T] importance ratio the clip acted on (detached)
    clipped_low: Tensor  # [B, T] bool; the lower clip bound zeroed this token's gradient
    clipped_high: Tensor  # [B, T] bool; the upper clip bound zeroed this token's gradient
    dual_clipped: Tensor  # [B, T] bool; the dual clip capped this token's loss


@dataclass(frozen=True)
class PolicyLossStats:
    """Detached scalars [], each normalised by the mini-batch totals: summed over micro-batches they give
    the mini-batch value (losses with the configured aggregation, fractions and means per token)."""

    pg_loss: Tensor  # [] policy-gradient part of the loss (after TIS)
    kl: Tensor  # [] KL estimate to the reference (0 without ref_logprobs), whether or not it is in the loss
    clip_frac_low: Tensor  # [] fraction of tokens clipped at 1 - clip_low (A < 0)
    clip_frac_high: Tensor  # [] fraction of tokens clipped at 1 + clip_high (A > 0)
    dual_clip_frac: Tensor  # [] fraction of tokens capped by the dual clip
    ratio_mean: Tensor  # [] mean importance ratio
    tis_weight_mean: Tensor  # [] mean truncated importance weight (1 when TIS is off)
    tis_clip_frac: Tensor  # [] fraction of tokens whose importance weight hit the cap
    entropy: Tensor | None = None  # [] mean entropy, when PolicyLossInput.entropy was given


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: Tensor  # [] scalar to backpropagate
    stats: PolicyLossStats
