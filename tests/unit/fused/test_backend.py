"""Backend choice: PyTorch on the CPU, logged once per device type; Triton on the CPU only under its interpreter."""

from __future__ import annotations

import logging

import pytest
import torch

from fused import backend as backend_module
from fused import pick_backend, selective_logprobs


def test_cpu_picks_torch_and_logs_the_choice_once(caplog, monkeypatch):
    monkeypatch.setattr(backend_module, "_logged", set())
    with caplog.at_level(logging.INFO, logger="fused.backend"):
        assert pick_backend("cpu") == "torch"
        assert pick_backend(torch.device("cpu")) == "torch"
    assert [r.getMessage() for r in caplog.records] == ["loss-head kernels on cpu use the torch backend"]


def test_explicit_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight = torch.randn(2, 16), torch.randn(20, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        selective_logprobs(hidden, weight, torch.tensor([1, 2]), backend="triton")
    with pytest.raises(ValueError, match="backend: must be"):
        selective_logprobs(hidden, weight, torch.tensor([1, 2]), backend="cuda")
