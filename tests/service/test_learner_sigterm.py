"""`rlfleet learner` as a process: serves while it trains, and SIGTERM finishes the step, checkpoints and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from launcher.cluster import own_job_environ
from rlfleet.clients import LearnerClient
from tests.conftest import free_port
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


async def _until(learner: LearnerClient, predicate, proc: subprocess.Popen, log: Path, limit: float = 240.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"learner exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            status = await learner.status(timeout=2)
            if predicate(status):
                return status
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"learner did not get there in {limit} s:\n{log.read_text()[-4000:]}")


def test_sigterm_checkpoints_and_exits_cleanly(tiny_model_dir, tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    log = tmp_path / "learner.log"
    args = [sys.executable, "-m", "learner", "--model", tiny_model_dir, "--run-dir", str(run_dir),
            "--max-steps", "100", "--checkpoint.every-steps", "100", "--lora.r", "4",
            "--lora.target-modules", "q_proj", "--lora.target-modules", "v_proj",
            "--source", json.dumps({"type": "push"}), "--server.host", "127.0.0.1", "--server.port", str(port),
            "--server.grace-seconds", "1"]
    # Without the process-group variables that an in-process learner of an earlier test exported.
    env = {**own_job_environ(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    async def drive():
        async with LearnerClient(f"127.0.0.1:{port}") as learner:
            await _until(learner, lambda s: s.state == "waiting_for_rollouts", proc, log)
            await learner.push_rollouts([fixed_batch("b0")])
            return await _until(learner, lambda s: s.step == 1 and s.state == "waiting_for_rollouts", proc, log)

    try:
        status = asyncio.run(drive())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status.policy_version == 1
    assert code == 0, log.read_text()[-4000:]
    assert (run_dir / "checkpoints" / "LATEST").read_text() == "step-00000001"
    saved = json.loads((run_dir / "checkpoints" / "step-00000001" / "state.json").read_text())
    assert saved["step"] == 1 and saved["policy_version"] == 1
    assert saved["source"]["consumed_batch_ids"] == ["b0"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
