"""Training checkpoints, written atomically: DeepSpeed state, the PEFT adapter, RNG states, step and data cursor.

    RUN_DIR/checkpoints/step-00000012/
        deepspeed/          trainable weights (the policy adapter; with GAE also the critic's adapter and
                            value head), optimiser and LR-scheduler states (DeepSpeed's format)
        adapter/            the PEFT adapter of this step (loadable by PeftModel.from_pretrained and vLLM)
        rng.pt              torch (CPU and CUDA), Python and NumPy RNG states, and the trainer's shuffle RNG
        state.json          step, policy_version, the rollout source's cursor
    RUN_DIR/checkpoints/LATEST   name of the newest complete checkpoint

A checkpoint is assembled in a hidden temporary folder, every file and folder of it fsynced, and
renamed into place; then LATEST is replaced (and the folder holding it fsynced), so a crash or a
power loss at any moment leaves the previous checkpoint intact and LATEST never points at a partial
one. Re-saving a step that already has a folder (a resumed run reaching it again) first renames the
old folder aside (`.old-step-...`) and deletes it only once the new one is in place: a crash between
the two renames leaves the aside copy, which `latest_checkpoint` falls back to.
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


def _fsync(path: Path) -> None:
    """Flushes a file's data, or a folder's entries (the names renamed into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync of every file and folder under `folder`, deepest first, and of `folder` itself."""
    for parent, _, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(parent) / name)
        _fsync(Path(parent))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)  # without it the rename itself may be lost on power loss


def _aside(final: Path) -> Path:
    return final.with_name(f".old-{final.name}")


def _install(tmp: Path, final: Path) -> None:
    """Renames the complete `tmp` to `final`; an existing `final` is renamed aside first, removed last."""
    aside = _aside(final)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


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
        _fsync_tree(tmp)  # every rank's shard is written (barrier above): all of it reaches the disk first
        _install(tmp, final)
        _write_atomically(root / LATEST, name)
        _prune(root, keep_last)
    _barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    """Keeps the newest `keep_last` checkpoints; drops what interrupted saves left (LATEST is newer now)."""
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep_last] + list(root.glob(".old-step-*")) + list(root.glob(".tmp-step-*")):
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None.

    The one LATEST names; if a crash came between renaming that folder aside and renaming its new
    copy in, the aside copy; without LATEST, the newest folder that holds a state.json.
    """
    root = Path(run_dir) / "checkpoints"
    candidates = []
    if (root / LATEST).exists():
        named = root / (root / LATEST).read_text().strip()
        candidates += [named, _aside(named)]
    candidates += sorted(root.glob("step-*"), reverse=True)
    return next((path for path in candidates if (path / "state.json").exists()), None)


def load_checkpoint(path: Path, engine: PolicyEngine, shuffle: torch.Generator) -> TrainingState:
    """Restores engine (weights, optimiser, scheduler) and RNG states; returns the saved counters."""
    engine.load_engine_state(path)
    _restore_rng(torch.load(path / "rng.pt", weights_only=False), shuffle)
    return TrainingState(**json.loads((path / "state.json").read_text()))
