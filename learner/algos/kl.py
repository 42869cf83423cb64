"""Per-token estimators of KL(policy || reference) from samples of the policy (Schulman 2020, "Approximating KL divergence")."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def _k1(log_ratio: Tensor) -> Tensor:
    return -log_ratio  # unbiased, high variance, can be negative


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio**2  # biased, low variance, >= 0


def _k3(log_ratio: Tensor) -> Tensor:
    return log_ratio.exp() - log_ratio - 1  # unbiased, low variance, >= 0


# Each takes log_ratio = ref_logprobs - logprobs, i.e. log(reference / policy) of the sampled token.
KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token KL estimate of the sampled tokens; with r = ref_logprobs - logprobs:

        k1 = -r        k2 = r**2 / 2        k3 = exp(r) - r - 1

    Not masked: multiply by the loss mask (or aggregate) before use. Gradients flow through
    both arguments; detach ref_logprobs (it is a constant of the reference model).  # [B, T]
    """
    log_ratio = ref_logprobs - logprobs  # [B, T]
    return KL_ESTIMATORS[estimator](log_ratio)  # [B, T]
