"""Training checkpoints, written atomically: DeepSpeed state, the PEFT adapter, RNG states, step and data cursor.

    RUN_DIR/checkpoints/step-00000012/
        deepspeed/          trainable weights (the policy adapter; with GAE also the critic's adapter and
                            value head), optimiser and LR-scheduler states (DeepSpeed's format)
        adapter/            the PEFT adapter of this step (loadable by PeftModel.from_pretrained and vLLM)
        rng.pt              torch (CPU and CUDA), Python and NumPy RNG states, and the trainer's shuffle RNG
        state.json          step, policy_version, the rollout source's cursor
    RUN_DIR/checkpoints/LATEST   name of the newest complete checkpoint

A checkpoint is assembled in a hidden temporary folder and renamed into place, then LATEST is
replaced, so a crash at any moment leaves the previous checkpoint intact and LATEST never points at
a partial one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.engine import PolicyEngine
from rlfleet.adapters import AdapterPayload, write_adapter_dir

LATEST = "LATEST"


@dataclass
class TrainingState:
    """Counters and cursors saved beside the weights."""

    step: int = 0
    policy_version: int = 0
    source: dict[str, Any] = field(default_factory=dict)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
             "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def save_checkpoint(run_dir: Path, engine: PolicyEngine, state: TrainingState, adapter: AdapterPayload,
                    shuffle: torch.Generator, keep_last: int) -> Path:
    """Writes the checkpoint of `state.step` and returns its folder; keeps the newest `keep_last`."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{state.step:08d}"
    tmp = root / f".tmp-{name}"
    if _is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_engine_state(tmp)  # every rank writes its own optimiser shard
    _barrier()
    final = root / name
    if _is_rank0():
        write_adapter_dir(adapter, tmp / "adapter")
        torch.save(_rng_state(shuffle), tmp / "rng.pt")
        _write_atomically(tmp / "state.json", json.dumps(asdict(state), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomically(root / LATEST, name)
        _prune(root, keep_last)
    _barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path, engine: PolicyEngine, shuffle: torch.Generator) -> TrainingState:
    """Restores engine (weights, optimiser, scheduler) and RNG states; returns the saved counters."""
    engine.load_engine_state(path)
    _restore_rng(torch.load(path / "rng.pt", weights_only=False), shuffle)
    return TrainingState(**json.loads((path / "state.json").read_text()))
