"""Which implementation of a fused kernel runs: Triton on CUDA, the PyTorch twin elsewhere (logged once)."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Literal

import torch

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "triton"]

_logged: set[tuple[str, str]] = set()


def triton_importable() -> bool:
    """True when the triton package is installed (it is optional on machines without CUDA)."""
    return importlib.util.find_spec("triton") is not None


def pick_backend(device: torch.device | str) -> str:
    """"triton" on a CUDA device with triton importable, else "torch"; logs each choice once per device type."""
    device = torch.device(device)
    choice = "triton" if device.type == "cuda" and triton_importable() else "torch"
    if (device.type, choice) not in _logged:
        _logged.add((device.type, choice))
        log.info("loss-head kernels on %s use the %s backend", device.type, choice)
    return choice


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """The backend to run: `auto` picks by device; an explicit `triton` on the CPU needs Triton's interpreter."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend: must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        return pick_backend(device)
    if backend == "triton":
        if not triton_importable():
            raise ValueError("backend: 'triton' asked for but the triton package is not installed")
        # Without the interpreter Triton would try to compile for a GPU and fail with an obscure error.
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend: 'triton' on a {device.type} tensor needs TRITON_INTERPRET=1")
    return backend
