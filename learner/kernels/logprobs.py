"""Selective log-probs and entropy straight from hidden states, without materialising [N, V] logits.

log p(target) = h . w_target - logsumexp_v(h . w_v). The log-sum-exp streams the vocabulary in
chunks (online softmax) and its backward recomputes each chunk's softmax instead of keeping it:
d lse / d h = sum_v softmax_v w_v. Memory is O(N * chunk) instead of O(N * V); the price is one more
[N, H] x [H, V] matmul in backward. The LM head is frozen under LoRA, so no weight gradient exists.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from learner.kernels.backend import Backend, resolve_backend


def _implementation(backend: str) -> ModuleType:
    """The module holding `lse_stats` / `lse_grad` for a resolved backend (Triton imported only when used)."""
    if backend == "triton":
        from learner.kernels import logprobs_triton

        return logprobs_triton
    from learner.kernels import logprobs_torch

    return logprobs_torch


class _SelectiveLogprobs(torch.autograd.Function):
    """Autograd node: saves hidden, weight, targets and lse [N]; backward recomputes the softmax chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,
                with_entropy: bool, backend: str) -> tuple[Tensor, Tensor]:
        impl = _implementation(backend)
        lse, entropy = impl.lse_stats(hidden, weight, chunk_size, with_entropy)    # [N], [N] | None
        valid = targets >= 0                                                       # [N]
        safe_targets = targets.clamp_min(0)                                         # [N]
        target_logits = torch.linalg.vecdot(hidden.float(), weight[safe_targets].float())  # [N]
        logprobs = torch.where(valid, target_logits - lse, 0.0)                    # [N]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_size, ctx.backend = chunk_size, backend
        entropy = entropy if entropy is not None else lse.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        valid = targets >= 0                                                       # [N]
        grad_out = torch.where(valid, grad_logprobs.float(), 0.0).contiguous()     # [N]
        grad = _implementation(ctx.backend).lse_grad(hidden, weight, lse, grad_out, ctx.chunk_size)  # [N, H]
        # d (h . w_target) / d h = w_target; d lse / d h was accumulated above and enters with a minus.
        grad = grad_out[:, None] * weight[targets.clamp_min(0)].float() - grad       # [N, H]
        return grad.to(hidden.dtype), None, None, None, None, None


def _check_inputs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> None:
    if hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(f"hidden: must be a float [N, H] tensor, got {hidden.dtype} of shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight: must be [V, H={hidden.shape[1]}], got {tuple(weight.shape)}")
    if weight.requires_grad:
        raise ValueError("weight: the LM head must be frozen (requires_grad=False); no weight gradient is computed")
    if targets.shape != hidden.shape[:1] or targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets: must be an integer [N={hidden.shape[0]}] tensor, "
                         f"got {targets.dtype} of shape {tuple(targets.shape)}")
    if weight.device != hidden.device or targets.device != hidden.device:
        raise ValueError(f"weight, targets: must be on hidden's device {hidden.device}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    if targets.numel() and int(targets.max()) >= weight.shape[0]:
        raise ValueError(f"targets: ids must be < V={weight.shape[0]}, got {int(targets.max())}")


def selective_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, *, chunk_size: int = 4096,
                       return_entropy: bool = False, backend: Backend = "auto") -> tuple[Tensor, Tensor | None]:
    """log p(targets) under softmax(hidden @ weight.T), and optionally its entropy, per token.

    hidden [N, H] (float, may require grad), weight [V, H] frozen LM head, targets [N] int ->
    logprobs [N] fp32 (differentiable w.r.t. hidden), entropy [N] fp32 detached | None.
    A negative target (e.g. -100 on padding) gives logprob 0 and no gradient. `chunk_size` is the
    vocabulary slice the PyTorch twin holds at once ([N, chunk_size] fp32); Triton uses its own tiles.
    """
    _check_inputs(hidden, weight, targets, chunk_size)
    resolved = resolve_backend(backend, hidden.device)
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.long().contiguous()
    logprobs, entropy = _SelectiveLogprobs.apply(hidden, weight, targets, chunk_size, return_entropy, resolved)
    return logprobs, (entropy if return_entropy else None)
