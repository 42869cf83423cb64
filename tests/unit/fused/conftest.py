"""Fixtures of the kernel tests: Triton's CPU interpreter switched on only while these tests run."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def triton_interpreter():
    """TRITON_INTERPRET=1 around each test on machines without CUDA.

    Triton reads it when a kernel is decorated, i.e. when `fused.*_triton` is first
    imported, which happens inside these tests; scoping it keeps other suites' Triton code compiled.
    """
    if torch.cuda.is_available():
        yield
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous
