"""Triton twin of the chunked log-sum-exp kernels (CUDA; on the CPU only under TRITON_INTERPRET=1).

Forward: a grid of (row block, vocabulary split); each program streams its vocabulary tiles with an
online softmax and writes partial (max, sum, sum * logit) per row, which a few [splits, N] torch ops
combine. Splitting the vocabulary keeps the GPU busy when N is small. Backward: a grid of (row block,
vocabulary tile); each program recomputes its logit tile, forms softmax * grad and atomically adds
its [BLOCK_N, BLOCK_H] slices of grad_hidden, the scheme of Wijmans et al. (2024), "Cut Your Losses
in Large-Vocabulary Language Models". Atomics make the fp32 gradient sum order nondeterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in fp32; UPCAST works around Triton 3.9's interpreter, whose dot multiplies bf16's raw uint16 bits."""
    if UPCAST:
        # A bf16 x bf16 product is exact in fp32, so this is what the GPU's bf16 MMA computes.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _logit_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
    """fp32 logits [BLOCK_N, BLOCK_V] = hidden[rows] @ weight[cols].T, reduced over H in BLOCK_H slices."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * H + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)          # [BLOCK_N, BLOCK_H]
        w = tl.load(w_ptr + cols.to(tl.int64)[:, None] * H + ks[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)          # [BLOCK_V, BLOCK_H]
        acc = _dot(h, tl.trans(w), acc, DOT_PRECISION, UPCAST)
    return acc


@triton.jit
def _lse_partials_kernel(h_ptr, w_ptr, max_ptr, sum_ptr, dot_ptr, N, V, H, blocks_per_split,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                         WITH_ENTROPY: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Partial online-softmax statistics of one row block over one vocabulary split -> [splits, N] outputs."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    run_dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = split * blocks_per_split
    # The host sizes splits so that every split holds at least one tile with a real column.
    last = tl.minimum(first + blocks_per_split, tl.cdiv(V, BLOCK_V))
    for block in range(first, last):
        cols = block * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        raw = _logit_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST)
        logits = tl.where(col_ok[None, :], raw, float("-inf"))                # [BLOCK_N, BLOCK_V]
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        rescale = tl.exp(run_max - new_max)
        shifted = tl.exp(logits - new_max[:, None])                           # [BLOCK_N, BLOCK_V], 0 off V
        run_sum = run_sum * rescale + tl.sum(shifted, axis=1)
        if WITH_ENTROPY:
            # `raw` is 0 on padded columns (masked loads), where `logits` is -inf and 0 * -inf is NaN.
            run_dot = run_dot * rescale + tl.sum(shifted * raw, axis=1)
        run_max = new_max
    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sum_ptr + out, run_sum, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(dot_ptr + out, run_dot, mask=row_ok)


@triton.jit
def _lse_grad_kernel(h_ptr, w_ptr, lse_ptr, g_ptr, grad_ptr, N, V, H,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     UPCAST: tl.constexpr):
    """grad_hidden[rows] += (softmax(logits[rows, cols]) * g[rows]) @ weight[cols], added atomically."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    logits = _logit_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    probs = tl.where(col_ok[None, :], tl.exp(logits - lse[:, None]) * g[:, None], 0.0)   # [BLOCK_N, BLOCK_V]
    # The weight's dtype for the second matmul, as flash attention casts P: bf16 tensor cores on bf16 heads.
    probs = probs.to(w_ptr.dtype.element_ty)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        w = tl.load(w_ptr + cols.to(tl.int64)[:, None] * H + ks[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)          # [BLOCK_V, BLOCK_H]
        part = _dot(probs, w, tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32), DOT_PRECISION, UPCAST)  # [BLOCK_N, BLOCK_H]
        tl.atomic_add(grad_ptr + rows.to(tl.int64)[:, None] * H + ks[None, :], part,
                      mask=row_ok[:, None] & k_ok[None, :])


def _tiles(n: int, v: int, h: int) -> tuple[int, int, int]:
    """BLOCK_N, BLOCK_V, BLOCK_H: powers of two, at least 16 (tl.dot's minimum), at most a tile that fits registers."""
    def fit(size: int, cap: int) -> int:
        return min(cap, max(16, triton.next_power_of_2(size)))
    return fit(n, 64), fit(v, 128), fit(h, 64)


def _dot_flags(dtype: torch.dtype) -> dict:
    # tf32x3 keeps fp32 inputs near fp32 accuracy on tensor cores; plain tf32 would cost ~1e-3 relative.
    interpreted = isinstance(_lse_grad_kernel, InterpretedFunction)
    return {"DOT_PRECISION": "tf32x3" if dtype == torch.float32 else "ieee", "UPCAST": interpreted}


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # the interpreter: a few splits, so that tests cover the cross-split combine


def _same_dtype(hidden: Tensor, weight: Tensor) -> Tensor:
    # tl.dot needs one input dtype; casting the small [N, H] side beats copying a [V, H] head.
    return hidden if hidden.dtype == weight.dtype else hidden.to(weight.dtype).contiguous()


def lse_stats(hidden: Tensor, weight: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """Per-token log-sum-exp of `hidden @ weight.T` (and entropy). hidden [N, H], weight [V, H] -> [N] fp32 each."""
    n, h = hidden.shape
    v = weight.shape[0]
    if n == 0:
        empty = hidden.new_empty(0, dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    hidden = _same_dtype(hidden, weight)
    block_n, block_v, block_h = _tiles(n, v, h)
    row_blocks, vocab_blocks = triton.cdiv(n, block_n), triton.cdiv(v, block_v)
    splits = max(1, min(vocab_blocks, triton.cdiv(_target_programs(hidden.device), row_blocks)))
    blocks_per_split = triton.cdiv(vocab_blocks, splits)
    splits = triton.cdiv(vocab_blocks, blocks_per_split)
    maxes, sums, dots = hidden.new_empty((3, splits, n), dtype=torch.float32)      # each [S, N]
    _lse_partials_kernel[(row_blocks, splits)](
        hidden, weight, maxes, sums, dots, n, v, h, blocks_per_split,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, WITH_ENTROPY=with_entropy,
        **_dot_flags(weight.dtype))
    top = maxes.amax(dim=0)                                                        # [N]
    scale = torch.exp(maxes - top)                                                 # [S, N]
    total = (sums * scale).sum(dim=0)                                              # [N]
    lse = top + torch.log(total)
    entropy = lse - (dots * scale).sum(dim=0) / total if with_entropy else None
    return lse, entropy


def lse_grad(hidden: Tensor, weight: Tensor, lse: Tensor, grad_lse: Tensor) -> Tensor:
    """sum_v softmax_v * grad_lse @ weight_v per row. hidden [N, H], weight [V, H], lse/grad_lse [N] -> [N, H] fp32."""
    n, h = hidden.shape
    v = weight.shape[0]
    grad = torch.zeros((n, h), dtype=torch.float32, device=hidden.device)         # [N, H]
    if n == 0:
        return grad
    hidden = _same_dtype(hidden, weight)
    block_n, block_v, block_h = _tiles(n, v, h)
    _lse_grad_kernel[(triton.cdiv(n, block_n), triton.cdiv(v, block_v))](
        hidden, weight, lse, grad_lse, grad, n, v, h,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, **_dot_flags(weight.dtype))
    return grad
