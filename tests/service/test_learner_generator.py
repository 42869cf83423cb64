"""Learner -> real generator: adapters trained by DeepSpeed are pushed to a running `rlfleet generator` (vLLM on the CPU)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.cluster import own_job_environ
from learner.config import LearnerConfig
from learner.server import LearnerServer
from rlfleet.clients import GeneratorClient, LearnerClient
from rlfleet.generation import PromptInput, Sampling
from rlfleet.health import check
from tests.conftest import free_port
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))


def _start_generator(model: str, tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp / "generator.log"
    args = [sys.executable, "-m", "generator", "--model", model, "--dtype", "float32",
            "--server.host", "127.0.0.1", "--server.port", str(port), "--max-model-len", "256",
            "--max-lora-rank", "8", "--keep-versions", "2", "--enforce-eager", "--gpu-memory-utilization", "0.1",
            "--kv-cache-space-gib", "1", "--adapter-dir", str(tmp / "served"), "--server.grace-seconds", "1"]
    # Not the process-group variables an in-process learner exported (vLLM would read them as its own).
    env = own_job_environ()
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "2")
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, f"127.0.0.1:{port}", log


def _wait_serving(target: str, proc: subprocess.Popen, log: Path, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"generator exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if check(target, timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"generator not SERVING after {limit} s:\n{log.read_text()[-4000:]}")


def test_trained_adapters_are_served_by_a_running_vllm_generator(tiny_model_dir, tmp_path):
    proc, target, log = _start_generator(tiny_model_dir, tmp_path)

    async def run():
        config = LearnerConfig.model_validate(dict(
            model=tiny_model_dir, run_dir=tmp_path / "run", max_steps=2, micro_batch_tokens=256,
            lora={"r": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}, deepspeed={"lr": 5e-2},
            source={"type": "push"}, generators=[target], push={"timeout_seconds": 120},
            server={"host": "127.0.0.1", "port": 0}))
        server = LearnerServer(config)
        port = await server.start()  # builds the DeepSpeed engine while vLLM starts
        await asyncio.to_thread(_wait_serving, target, proc, log)
        training = asyncio.ensure_future(server.run())
        async with LearnerClient(f"127.0.0.1:{port}") as learner:
            await learner.push_rollouts([fixed_batch(f"b{i}", seed=i) for i in range(2)])
            assert await training == 0
        acked = dict(server.pusher.acked)
        async with GeneratorClient(target) as generator:
            info = await generator.info()
            groups = [g async for g in generator.generate([PromptInput("p", token_ids=(65, 66, 67))],
                                                          Sampling(n=2, max_tokens=4, temperature=1.0, seed=0),
                                                          policy_version=2)]
        return acked, info, groups

    try:
        acked, info, groups = asyncio.run(run())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert acked == {target: 2}
    assert info.policy_version == 2 and info.loaded_versions == [1, 2]
    assert groups[0].policy_version == 2 and len(groups[0].samples) == 2
    assert all(len(s.token_ids) >= 1 for s in groups[0].samples)
