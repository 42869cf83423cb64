"""Fused loss-head kernels shared by the learner and the reference: chunked selective log-probs, fused policy loss.

Each exists twice, a Triton kernel for CUDA and a PyTorch twin of the same math for the CPU;
`backend="auto"` picks by device (`pick_backend`, logged once per device type).

    logprobs, entropy = selective_logprobs(hidden, lm_head.weight, targets, return_entropy=True)
    out = fused_policy_loss(logprobs.view(B, T), old, behaviour, advantages, mask, ref,
                            clip_low=0.2, clip_high=0.28, tis_cap=2.0, kl_coef=0.0, aggregation="token_mean")
    out.loss.backward()
"""

from fused.backend import pick_backend
from fused.logprobs import selective_logprobs
from fused.policy_loss import FusedLossOutput, fused_policy_loss

__all__ = ["FusedLossOutput", "fused_policy_loss", "pick_backend", "selective_logprobs"]
