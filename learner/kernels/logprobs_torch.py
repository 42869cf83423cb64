"""PyTorch twin of the chunked log-sum-exp kernels: streams the vocabulary so [N, V] logits never exist at once.

Both functions work on one vocabulary chunk of `chunk_size` rows of the LM head at a time and keep
fp32 running statistics per token, the online softmax of Milakov & Gimelshein (2018), "Online
normalizer calculation for softmax". Logits are computed in fp32 even for bf16 inputs: a log-sum-exp
over 10^5 bf16 logits loses about three significant digits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lse_stats(hidden: Tensor, weight: Tensor, chunk_size: int, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """Per-token log-sum-exp of `hidden @ weight.T` and, optionally, the entropy of its softmax.

    hidden [N, H], weight [V, H] -> lse [N] fp32, entropy [N] fp32 | None. With M the running max,
    keeps S = sum_v exp(l_v - M) and D = sum_v exp(l_v - M) (l_v - M); then lse = M + log S and
    entropy = lse - E_p[l] = log S - D / S, which has no cancellation between large numbers.
    """
    n = hidden.shape[0]
    h32 = hidden.float()                                                  # [N, H]
    run_max = hidden.new_full((n,), float("-inf"), dtype=torch.float32)   # [N] M
    run_sum = hidden.new_zeros(n, dtype=torch.float32)                    # [N] S
    run_dot = hidden.new_zeros(n, dtype=torch.float32)                    # [N] D
    for start in range(0, weight.shape[0], chunk_size):
        shifted = h32 @ weight[start:start + chunk_size].float().T        # [N, C] logits, shifted in place
        new_max = torch.maximum(run_max, shifted.amax(dim=1))             # [N]
        rescale = torch.exp(run_max - new_max)                            # [N], 0 on the first chunk
        shifted.sub_(new_max[:, None])
        if with_entropy:
            exps = torch.exp(shifted)                                     # [N, C]
            # D' = r (D + (M - M') S) moves D to the new max before this chunk's terms are added.
            run_dot = rescale * (run_dot + torch.where(run_max.isfinite(), run_max - new_max, 0.0) * run_sum) \
                + torch.linalg.vecdot(exps, shifted)
        else:
            exps = shifted.exp_()
        run_sum = run_sum * rescale + exps.sum(dim=1)
        run_max = new_max
    lse = run_max + torch.log(run_sum)                                    # [N]
    entropy = torch.log(run_sum) - run_dot / run_sum if with_entropy else None  # [N]
    return lse, entropy


def lse_grad(hidden: Tensor, weight: Tensor, lse: Tensor, grad_lse: Tensor, chunk_size: int) -> Tensor:
    """d(sum_n grad_lse[n] * lse[n]) / d hidden = grad_lse * sum_v softmax_v weight_v, recomputed chunk by chunk.

    hidden [N, H], weight [V, H], lse [N] fp32, grad_lse [N] fp32 -> grad_hidden [N, H] fp32.
    """
    h32 = hidden.float()                                                  # [N, H]
    neg_lse = -lse[:, None]                                               # [N, 1]
    grad = torch.zeros_like(h32)                                          # [N, H]
    for start in range(0, weight.shape[0], chunk_size):
        w_chunk = weight[start:start + chunk_size].float()                # [C, H]
        # The bias of addmm subtracts lse inside the matmul: one elementwise pass (exp) per chunk.
        probs = torch.addmm(neg_lse, h32, w_chunk.T).exp_()               # [N, C] softmax
        grad.addmm_(probs, w_chunk)
    # grad_lse is per row, so it scales the sum once instead of every chunk.
    return grad.mul_(grad_lse[:, None])
