"""Selective log-probs and entropy straight from hidden states, without materialising [N, V] logits.

log p(target) = h . w_target - logsumexp_v(h . w_v), and d log p / d h = w_target - E_p[w] with
E_p[w] = sum_v softmax_v w_v. The log-sum-exp streams the vocabulary in chunks (online softmax), so
memory is O(N * chunk) instead of O(N * V). Where E_p[w] comes from differs by backend:
- Triton (CUDA) keeps hidden, weight, targets and lse [N] and recomputes each tile's softmax in
  backward (Wijmans et al. 2024, "Cut Your Losses"): a [BLOCK_N, H] accumulator does not fit registers.
- The PyTorch twin accumulates E_p[w] during the forward pass and keeps it ([N, H] fp32): two
  matmuls over the vocabulary in all, like the naive path, instead of three (see logprobs_torch.py).
Entropy is returned detached. The LM head is frozen under LoRA, so no weight gradient exists.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fused.backend import Backend, resolve_backend


def _target_logits(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """h_n . w_target[n] in fp32, [N]; a negative (ignored) target reads row 0 and is masked by the caller."""
    return torch.linalg.vecdot(hidden.float(), weight[targets.clamp_min(0)].float())


class _RecomputedLogprobs(torch.autograd.Function):
    """Triton: saves hidden, weight, targets and lse [N]; backward recomputes the softmax tile by tile."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor]:
        from fused import logprobs_triton

        lse, entropy = logprobs_triton.lse_stats(hidden, weight, with_entropy)     # [N], [N] | None
        logprobs = torch.where(targets >= 0, _target_logits(hidden, weight, targets) - lse, 0.0)  # [N]
        ctx.save_for_backward(hidden, weight, targets, lse)
        entropy = entropy if entropy is not None else lse.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor):
        from fused import logprobs_triton

        hidden, weight, targets, lse = ctx.saved_tensors
        grad_out = torch.where(targets >= 0, grad_logprobs.float(), 0.0).contiguous()  # [N]
        grad_lse = logprobs_triton.lse_grad(hidden, weight, lse, grad_out)         # [N, H]
        # d (h . w_target) / d h = w_target; d lse / d h enters with a minus.
        grad = grad_out[:, None] * weight[targets.clamp_min(0)].float() - grad_lse  # [N, H]
        return grad.to(hidden.dtype), None, None, None


class _StreamedLogprobs(torch.autograd.Function):
    """PyTorch twin: forward streams the vocabulary once and keeps d logprob / d hidden [N, H]; backward scales it."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,
                with_entropy: bool, needs_grad: bool) -> tuple[Tensor, Tensor]:
        from fused import logprobs_torch

        lse, entropy, expected_weight = logprobs_torch.lse_stats(
            hidden, weight, chunk_size, with_entropy, with_expectation=needs_grad)  # [N], [N] | None, [N, H] | None
        valid = targets >= 0                                                        # [N]
        logprobs = torch.where(valid, _target_logits(hidden, weight, targets) - lse, 0.0)  # [N]
        if needs_grad:
            # d log p(target) / d h = w_target - E_p[w]; an ignored target has none.
            jacobian = weight[targets.clamp_min(0)].float().sub_(expected_weight)   # [N, H]
            ctx.save_for_backward(jacobian.mul_(valid[:, None]))
            ctx.hidden_dtype = hidden.dtype
        entropy = entropy if entropy is not None else lse.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor):
        (jacobian,) = ctx.saved_tensors
        return (grad_logprobs.float()[:, None] * jacobian).to(ctx.hidden_dtype), None, None, None, None, None


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
    if resolved == "triton":
        logprobs, entropy = _RecomputedLogprobs.apply(hidden, weight, targets, return_entropy)
    else:
        # Decided here: inside forward grad mode is off, and needs_input_grad ignores an outer no_grad().
        needs_grad = hidden.requires_grad and torch.is_grad_enabled()
        logprobs, entropy = _StreamedLogprobs.apply(hidden, weight, targets, chunk_size, return_entropy, needs_grad)
    return logprobs, (entropy if return_entropy else None)
