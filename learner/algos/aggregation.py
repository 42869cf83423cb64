"""Loss aggregation: how a [B, T] per-token loss becomes the scalar that is backpropagated."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from learner.algos.masked import masked


def _num_sequences(mask: Tensor, num_sequences: float | None) -> Tensor | float:
    # Rows without a single trained token (e.g. removed by the overlong filter) are not sequences.
    return num_sequences if num_sequences is not None else (mask.sum(-1) > 0).sum().clamp(min=1)


def _token_mean(per_token: Tensor, mask: Tensor, num_tokens: float | None, num_sequences: float | None,
                seq_sum_normaliser: float | None) -> Tensor:
    denominator = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    return masked(per_token, mask).sum() / denominator  # []


def _seq_mean_token_mean(per_token: Tensor, mask: Tensor, num_tokens: float | None, num_sequences: float | None,
                         seq_sum_normaliser: float | None) -> Tensor:
    per_sequence = masked(per_token, mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
    return per_sequence.sum() / _num_sequences(mask, num_sequences)  # []


def _seq_mean_token_sum(per_token: Tensor, mask: Tensor, num_tokens: float | None, num_sequences: float | None,
                        seq_sum_normaliser: float | None) -> Tensor:
    if seq_sum_normaliser is None:
        raise ValueError("seq_sum_normaliser: required by aggregation 'seq_mean_token_sum'")
    per_sequence = masked(per_token, mask).sum(-1) / seq_sum_normaliser  # [B]
    return per_sequence.sum() / _num_sequences(mask, num_sequences)  # []


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
}


def aggregate(per_token: Tensor, mask: Tensor, mode: str, num_tokens: float | None = None,
              num_sequences: float | None = None, seq_sum_normaliser: float | None = None) -> Tensor:
    """Reduces a per-token loss [B, T] under `mask` [B, T] to a scalar [].

        token_mean          sum_{b,t} m*l / N_tok                              (DAPO, Yu et al. 2025)
        seq_mean_token_mean sum_b (sum_t m*l / sum_t m) / N_seq                (GRPO, Shao et al. 2024 eq. 3)
        seq_mean_token_sum  sum_b (sum_t m*l / C) / N_seq, C = seq_sum_normaliser  (Dr.GRPO, Liu et al. 2025)

    N_tok = num_tokens, N_seq = num_sequences: the totals of the whole mini-batch, so that the losses
    of its micro-batches add up to the mini-batch loss. Unset, they are this batch's mask.sum() and
    its number of rows with at least one masked token (both at least 1, so an empty batch gives 0).
    """
    return AGGREGATIONS[mode](per_token, mask, num_tokens, num_sequences, seq_sum_normaliser)
