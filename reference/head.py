"""The vocabulary projection restricted to completion positions: log-prob (and entropy) of given targets.

Same signature as the learner's fused kernel (`learner/kernels/logprobs.py`), in plain PyTorch:
logits are made `chunk_size` rows at a time in float32, so memory stays at [chunk_size, V] whatever
N is, and positions that are never scored (prompt tokens, padding) are never projected at all.
"""

from __future__ import annotations

import torch


def selective_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024,
                       return_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(hidden @ weight.T)[n, targets[n]] for every row n, and optionally the entropy of that row.

    hidden [N, H] (any dtype), weight [V, H], targets [N] int64 -> (logprobs [N], entropy [N] | None), float32.
    Entropy is H = logsumexp(z) - sum_v softmax(z)_v * z_v in nats.
    """
    n = hidden.shape[0]
    weight32 = weight.float()  # a no-op for float32 models; bf16 logits would round log-probs to ~1e-2
    logprobs = torch.empty(n, dtype=torch.float32, device=hidden.device)  # [N]
    entropy = torch.empty(n, dtype=torch.float32, device=hidden.device) if return_entropy else None  # [N]
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        logits = hidden[start:end].float() @ weight32.T  # [C, V]
        lse = torch.logsumexp(logits, dim=-1)  # [C]
        logprobs[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - lse
        if entropy is not None:
            probs = torch.softmax(logits, dim=-1)  # [C, V]
            entropy[start:end] = lse - (probs * logits).sum(-1)
    return logprobs, entropy
