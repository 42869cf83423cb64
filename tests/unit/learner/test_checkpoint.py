"""Checkpoint writes survive a crash at any rename or delete, and put every file and folder name on the disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from learner.checkpoint import TrainingState, latest_checkpoint, save_checkpoint
from rlfleet.adapters import AdapterPayload


class ShardWriter:
    """Stands in for PolicyEngine's part of a checkpoint (DeepSpeed writes a folder of shards)."""

    def save_engine_state(self, folder: Path) -> None:
        (folder / "deepspeed").mkdir()
        (folder / "deepspeed" / "shard.pt").write_bytes(b"weights")


class Crash(BaseException):
    """The process dies here: nothing after the failing call runs (no except or finally of ours catches it)."""


def _save(run_dir: Path, step: int) -> Path:
    adapter = AdapterPayload(step, "base", json.dumps({"r": 1, "step": step}), f"adapter {step}".encode())
    return save_checkpoint(run_dir, ShardWriter(), TrainingState(step, step), adapter, torch.Generator(), keep_last=2)


def _assert_whole(path: Path | None, steps: set[int]) -> None:
    """`path` is a complete checkpoint of one of `steps`: every part written, all of the same step."""
    assert path is not None
    step = json.loads((path / "state.json").read_text())["step"]
    assert step in steps
    assert json.loads((path / "adapter" / "adapter_config.json").read_text())["step"] == step
    assert (path / "adapter" / "adapter_model.safetensors").read_bytes() == f"adapter {step}".encode()
    assert (path / "deepspeed" / "shard.pt").read_bytes() == b"weights" and (path / "rng.pt").stat().st_size > 0


def _crashing_at(monkeypatch, k: int) -> None:
    """Makes the k-th rename or delete (counted from 1) kill the save."""
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def counted(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == k:
                raise Crash
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", counted(real_replace))
    monkeypatch.setattr(shutil, "rmtree", counted(real_rmtree))


@pytest.mark.parametrize("second_step", [2, 1], ids=["new-step", "re-save-of-the-same-step"])
def test_a_crash_at_any_rename_or_delete_leaves_a_whole_checkpoint(tmp_path, monkeypatch, second_step):
    crash_points = 0
    for k in range(1, 50):
        run_dir = tmp_path / f"crash-{k}"
        _save(run_dir, 1)
        with monkeypatch.context() as patch:
            _crashing_at(patch, k)
            try:
                _save(run_dir, second_step)
            except Crash:
                crash_points += 1
            else:
                break
        # After the crash: the old step or the new one, never nothing, never a mix.
        _assert_whole(latest_checkpoint(run_dir), {1, second_step})
        # The restarted learner saves again over whatever the crash left behind.
        _assert_whole(_save(run_dir, 3), {3})
        _assert_whole(latest_checkpoint(run_dir), {3})
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")) == []
    # The save renames or deletes at least: old tmp, adapter tmp -> folder, state.json, the folder, LATEST.
    assert crash_points >= 5
    _assert_whole(latest_checkpoint(run_dir), {second_step})


def test_the_aside_copy_of_a_re_saved_step_is_found_when_the_new_one_never_arrived(tmp_path):
    # The state a crash leaves between "step-1 renamed aside" and "new step-1 renamed in".
    _save(tmp_path, 1)
    root = tmp_path / "checkpoints"
    os.replace(root / "step-00000001", root / ".old-step-00000001")
    _assert_whole(latest_checkpoint(tmp_path), {1})
    assert latest_checkpoint(tmp_path).name == ".old-step-00000001"


def test_every_file_and_folder_name_is_fsynced_before_latest_names_it(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    synced: list[str] = []
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        events.append(("fsync", synced[-1]))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = _save(tmp_path, 2)
    root = (tmp_path / "checkpoints").resolve()
    tmp = root / ".tmp-step-00000002"
    # Every file and folder of the new checkpoint, under the name it had while being written.
    expected = {str(tmp / p.relative_to(final)) for p in final.rglob("*")} | {str(tmp)}
    assert expected - set(synced) == set()
    # The folder rename is made durable (root fsynced after it) before LATEST is replaced...
    install = events.index(("replace", str(root / "step-00000002")))
    latest = events.index(("replace", str(root / "LATEST")))
    assert ("fsync", str(root)) in events[install:latest]
    # ...and LATEST's own rename is made durable after it.
    assert ("fsync", str(root)) in events[latest:]
