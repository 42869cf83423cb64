"""Shared pytest fixtures: the tiny local model (built once per session) and loopback helpers."""

from __future__ import annotations

import os
import socket

import grpc.aio
import pytest

# vLLM in the test process: in-process engine (no worker subprocess), as documented in README.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. on first import, which may happen in
# any test module (the learner and reference import fused); without CUDA, interpret always.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One reference to gRPC's asyncio runtime for the whole session. Without it the runtime is torn down
# whenever a test's last aio channel or server is collected and rebuilt by the next one, and that
# teardown (joining the poller thread) hung a CI run during garbage collection (grpc/grpc#22365).
grpc.aio.init_grpc_aio()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Path of the tiny Llama model + byte tokenizer, built once for the whole test session."""
    from launcher.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
