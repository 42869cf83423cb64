"""Data parallel over gloo on the CPU: two ranks (rank 0 drives, rank 1 follows) train what one process trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from launcher.cluster import own_job_environ
from tests.conftest import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def _launch(model: str, run_dir: Path, rank: int, world: int, port: int, log: Path) -> subprocess.Popen:
    env = own_job_environ()
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions")))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.unit.learner.dp_worker", model, str(run_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def test_two_ranks_train_the_same_adapter_as_one(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    port_one, port_two = free_port(), free_port()
    procs = [_launch(tiny_model_dir, one, 0, 1, port_one, tmp_path / "one.log"),
             _launch(tiny_model_dir, two, 0, 2, port_two, tmp_path / "two-0.log"),
             _launch(tiny_model_dir, two, 1, 2, port_two, tmp_path / "two-1.log")]
    try:
        codes = [p.wait(300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = {name: (tmp_path / name).read_text()[-3000:] for name in ("one.log", "two-0.log", "two-1.log")}
    assert codes == [0, 0, 0], logs
    records = {name: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
               for name, d in (("one", one), ("two", two))}
    # micro_batches is the mean over a step's 2 updates; > 2 means an update had 3 (an odd count), so
    # rank 0 ran micro-batches 0 and 2 while rank 1 ran 1 and a weight-0 repeat
    assert all(r["micro_batches"] > 2 for r in records["one"])
    for a, b in zip(records["one"], records["two"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    first = load_file(one / "adapter" / "adapter_model.safetensors")
    second = load_file(two / "adapter" / "adapter_model.safetensors")
    for name in first:  # summed in another order across ranks; Adam magnifies that near eps (see test_training)
        assert (second[name] - first[name]).norm() <= 1e-3 * first[name].norm(), name
    assert any(float(t.abs().max()) > 0 for name, t in first.items() if "lora_B" in name)

