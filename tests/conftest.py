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


def random_lora_adapter(model_dir: str, out_dir, seed: int, rank: int = 8, alpha: float | None = None,
                        targets: tuple[str, ...] = ("q_proj", "v_proj")):
    """Saves a PEFT LoRA adapter of `model_dir` with random (non-zero) A and B, so it visibly changes the
    model, to `out_dir` (alpha defaults to 4 x rank); returns `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=rank, lora_alpha=4 * rank if alpha is None else alpha, target_modules=list(targets),
                      init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out_dir)
    return out_dir


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
