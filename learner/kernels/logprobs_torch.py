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

    hidden [N, H], weight [V, H] -> lse [N] fp32, entropy [N] fp32 | None.
    """
    n = hidden.shape[0]
    h32 = hidden.float()                                             # [N, H]
    run_max = hidden.new_full((n,), float("-inf"), dtype=torch.float32)  # [N]
    run_sum = hidden.new_zeros(n, dtype=torch.float32)                # [N] sum_v exp(l_v - run_max)
    run_dot = hidden.new_zeros(n, dtype=torch.float32)                # [N] sum_v exp(l_v - run_max) * l_v
    for start in range(0, weight.shape[0], chunk_size):
        logits = h32 @ weight[start:start + chunk_size].float().T    # [N, C]
        new_max = torch.maximum(run_max, logits.amax(dim=1))          # [N]
        rescale = torch.exp(run_max - new_max)                        # [N], 0 on the first chunk
        shifted = torch.exp(logits - new_max[:, None])                # [N, C]
        run_sum = run_sum * rescale + shifted.sum(dim=1)
        if with_entropy:
            run_dot = run_dot * rescale + torch.linalg.vecdot(shifted, logits)
        run_max = new_max
    lse = run_max + torch.log(run_sum)                                # [N]
    # H = lse - E_p[l]: the entropy of softmax(l) written with the statistics already in hand.
    entropy = lse - run_dot / run_sum if with_entropy else None      # [N]
    return lse, entropy


def lse_grad(hidden: Tensor, weight: Tensor, lse: Tensor, grad_lse: Tensor, chunk_size: int) -> Tensor:
    """d(sum_n grad_lse[n] * lse[n]) / d hidden = sum_v softmax_v * grad_lse @ weight_v, recomputed chunk by chunk.

    hidden [N, H], weight [V, H], lse [N] fp32, grad_lse [N] fp32 -> grad_hidden [N, H] fp32.
    """
    h32 = hidden.float()                                              # [N, H]
    grad = torch.zeros_like(h32)                                      # [N, H]
    for start in range(0, weight.shape[0], chunk_size):
        w_chunk = weight[start:start + chunk_size].float()            # [C, H]
        probs = h32 @ w_chunk.T                                       # [N, C] logits, turned into p * g in place
        probs.sub_(lse[:, None]).exp_().mul_(grad_lse[:, None])
        grad.addmm_(probs, w_chunk)
    return grad
