"""Chunked selective log-probs and entropy: both backends against a float64 log_softmax reference."""

from __future__ import annotations

import math

import pytest
import torch

from fused import selective_logprobs
from fused.backend import triton_importable

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not triton_importable(), reason="no triton"))]
# Per dtype: (atol, rtol) of logprobs / entropy (fp32 outputs) and of grad_hidden (returned in hidden's dtype).
# bf16: inputs are rounded to bf16 before the float64 reference, so only the kernels' own fp32 sums and
# the bf16 gradient (8 bits of mantissa; Triton also rounds softmax * grad to bf16) differ from it.
TOLERANCES = {
    torch.float32: {"values": (2e-5, 1e-5), "grad": (2e-5, 1e-4)},
    torch.bfloat16: {"values": (1e-4, 1e-4), "grad": (1e-2, 2e-2)},
}


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _reference(hidden, weight, targets, grad_out):
    """float64 log_softmax(h @ W.T).gather(targets), entropy and d(sum(grad_out * logprobs))/dh."""
    h = hidden.double().detach().requires_grad_()
    log_probs = torch.log_softmax(h @ weight.double().T, dim=-1)                     # [N, V]
    valid = targets >= 0
    picked = log_probs.gather(1, targets.clamp_min(0)[:, None]).squeeze(1)          # [N]
    logprobs = torch.where(valid, picked, 0.0)
    entropy = -(log_probs.exp() * log_probs).sum(-1)                                 # [N]
    (logprobs * grad_out.double()).sum().backward()
    return logprobs.detach(), entropy.detach(), h.grad


def _case(n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=gen) / math.sqrt(h) * 3).to(dtype).to(device)  # logits of std ~3
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    if n > 3:
        targets[3] = -100                                                            # a padded row
    grad_out = torch.randn(n, generator=gen).to(device)
    return hidden, weight, targets, grad_out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# Odd sizes: V is a multiple of neither the torch chunk (64) nor Triton's tile (128 at V=203), N crosses
# Triton's 64-row block, H its 64-wide slice; (1, 16, 17) is a single row with one real column in its last tile.
@pytest.mark.parametrize("n,h,v", [(70, 72, 203), (1, 16, 17)])
def test_matches_float64_reference(backend, dtype, n, h, v):
    device = _device(backend)
    hidden, weight, targets, grad_out = _case(n, h, v, dtype, device)
    ref_lp, ref_entropy, ref_grad = _reference(hidden, weight, targets, grad_out)
    leaf = hidden.clone().requires_grad_()
    logprobs, entropy = selective_logprobs(leaf, weight, targets, chunk_size=64, return_entropy=True,
                                           backend=backend)
    (logprobs * grad_out).sum().backward()
    atol, rtol = TOLERANCES[dtype]["values"]
    assert logprobs.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=atol, rtol=rtol)
    torch.testing.assert_close(entropy.double(), ref_entropy, atol=atol, rtol=rtol)
    atol, rtol = TOLERANCES[dtype]["grad"]
    assert leaf.grad.dtype == dtype
    torch.testing.assert_close(leaf.grad.double(), ref_grad, atol=atol, rtol=rtol)
    if n > 3:
        assert logprobs[3].item() == 0.0 and not leaf.grad[3].any()  # padded row: no value, no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_token_vocabulary_by_hand(backend):
    # h = 1, W = [[0], [ln 3]] -> logits [0, ln 3], softmax [1/4, 3/4]
    # log p(1) = ln(3/4); entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) = ln 4 - (3/4) ln 3
    # d/dh [h ln 3 - ln(1 + 3^h)] at h = 1: ln 3 - 3 ln 3 / 4 = ln(3) / 4
    device = _device(backend)
    hidden = torch.ones(1, 1, device=device, requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3)]], device=device)
    logprobs, entropy = selective_logprobs(hidden, weight, torch.tensor([1], device=device),
                                           return_entropy=True, backend=backend)
    logprobs.sum().backward()
    assert logprobs.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert entropy.item() == pytest.approx(math.log(4) - 0.75 * math.log(3), abs=1e-6)
    assert hidden.grad.item() == pytest.approx(math.log(3) / 4, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_no_entropy(backend):
    device = _device(backend)
    hidden = torch.zeros(0, 16, device=device, requires_grad=True)
    logprobs, entropy = selective_logprobs(hidden, torch.randn(40, 16, device=device),
                                           torch.zeros(0, dtype=torch.long, device=device), backend=backend)
    logprobs.sum().backward()
    assert logprobs.shape == (0,) and entropy is None and hidden.grad.shape == (0, 16)


def test_chunk_size_does_not_change_the_result():
    # One chunk holding the whole vocabulary is the plain log_softmax; 7 does not divide V = 203.
    hidden, weight, targets, _ = _case(9, 24, 203, torch.float32, "cpu")
    whole, whole_entropy = selective_logprobs(hidden, weight, targets, chunk_size=203, return_entropy=True)
    small, small_entropy = selective_logprobs(hidden, weight, targets, chunk_size=7, return_entropy=True)
    torch.testing.assert_close(small, whole)
    torch.testing.assert_close(small_entropy, whole_entropy)


def test_forward_only_under_no_grad_skips_the_gradient_matmul(monkeypatch):
    # Old log-probs are computed under no_grad with LoRA weights that require grad: E_p[w] would be wasted.
    from fused import logprobs_torch

    asked: list[bool] = []
    real = logprobs_torch.lse_stats
    monkeypatch.setattr(logprobs_torch, "lse_stats",
                        lambda *args, with_expectation: asked.append(with_expectation) or real(
                            *args, with_expectation=with_expectation))
    hidden, weight, targets, _ = _case(5, 16, 33, torch.float32, "cpu")
    with torch.no_grad():
        logprobs, _ = selective_logprobs(hidden.requires_grad_(), weight, targets)
    selective_logprobs(hidden, weight, targets)
    assert logprobs.grad_fn is None and logprobs.shape == (5,)
    assert asked == [False, True]


@pytest.mark.parametrize("change,message", [
    (lambda h, w, t: (h, w.requires_grad_(), t), "weight: the LM head must be frozen"),
    (lambda h, w, t: (h, w, t + 1000), "targets: ids must be < V=33"),
    (lambda h, w, t: (h, w[:, :8], t), r"weight: must be \[V, H=16\]"),
    (lambda h, w, t: (h, w, t.float()), "targets: must be an integer"),
    (lambda h, w, t: (h[None], w, t), "hidden: must be a float"),
])
def test_bad_inputs_name_the_argument(change, message):
    hidden, weight, targets, _ = _case(5, 16, 33, torch.float32, "cpu")
    with pytest.raises(ValueError, match=message):
        selective_logprobs(*change(hidden, weight, targets))


@pytest.mark.parametrize("backend,kept", [
    # The PyTorch twin keeps d logprob / d hidden; Triton keeps hidden, weight, targets and lse.
    ("torch", [(6, 16)]),
    pytest.param("triton", [(6, 16), (300, 16), (6,), (6,)],
                 marks=pytest.mark.skipif(not triton_importable(), reason="no triton")),
])
def test_backward_keeps_nothing_vocabulary_sized(backend, kept):
    # The point of the kernel: nothing [N, V] survives the forward for backward to use.
    device = _device(backend)
    hidden, weight, targets, _ = _case(6, 16, 300, torch.float32, device)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        selective_logprobs(hidden.requires_grad_(), weight, targets, chunk_size=64, return_entropy=True,
                           backend=backend)
    assert sorted(saved) == sorted(kept)
