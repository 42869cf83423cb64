"""A PEFT LoRA adapter as one value (config, safetensors weights, policy version) and its folder on disk."""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import xxhash

from rlfleet.adapters.weights import check_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_READ_BYTES = 2 * 1024 * 1024


def checksum(data: bytes | memoryview | Path) -> str:
    """Lower-case hex XXH3-128 of bytes or of a file's contents (AdapterHeader.xxh3_128)."""
    digest = xxhash.xxh3_128()
    if isinstance(data, Path):
        with open(data, "rb") as f:
            while block := f.read(_READ_BYTES):
                digest.update(block)
    else:
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class AdapterPayload:
    """A PEFT LoRA adapter: config JSON, safetensors weights, and the policy version it is.

    `weights` is the safetensors file's bytes, or a staged file that already holds them (written and
    verified by `AdapterAssembler(spool_dir=...)`); `write_adapter_dir` moves a staged file into
    place instead of writing it again.
    """

    policy_version: int
    base_model_id: str
    config_json: str
    weights: bytes | Path
    run_id: str = ""    # the learner run that produced it: a version number means one set of weights per run

    @functools.cached_property
    def checksum(self) -> str:
        """XXH3-128 of the weights, computed once per payload (the learner sends one payload to many generators)."""
        return checksum(self.weights)

    @property
    def nbytes(self) -> int:
        return self.weights.stat().st_size if isinstance(self.weights, Path) else len(self.weights)

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    def tensor_table(self) -> dict:
        """The safetensors header: tensor name -> {dtype, shape, data_offsets}; raises InvalidRequest if malformed."""
        if isinstance(self.weights, Path):
            with open(self.weights, "rb") as f:
                head = f.read(8)
                size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                return check_safetensors(head + f.read(min(size, 100 * 1024**2)))
        return check_safetensors(self.weights)


def adapter_from_dir(path: str | Path, policy_version: int, base_model_id: str, run_id: str = "") -> AdapterPayload:
    """Reads a folder written by PEFT's `save_pretrained` (safetensors format)."""
    path = Path(path)
    return AdapterPayload(policy_version, base_model_id, (path / CONFIG_FILE).read_text(),
                          (path / WEIGHTS_FILE).read_bytes(), run_id)


def write_adapter_dir(payload: AdapterPayload, dest: str | Path, durable: bool = True) -> Path:
    """Writes the adapter as a PEFT folder atomically: readers see the whole folder or none of it.

    A staged weights file (on the same file system) is moved, not copied. `durable=False` skips the
    fsync: right for a generator's adapter cache, which a restarted generator refills from the learner
    anyway, and worth ~1 s per 320 MiB on a slow disk; checkpoints keep the default.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    with open(tmp / CONFIG_FILE, "w") as f:
        f.write(payload.config_json)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    if isinstance(payload.weights, Path):
        os.replace(payload.weights, tmp / WEIGHTS_FILE)
        if durable:
            with open(tmp / WEIGHTS_FILE, "rb") as f:
                os.fsync(f.fileno())
    else:
        with open(tmp / WEIGHTS_FILE, "wb") as f:
            f.write(payload.weights)
            f.flush()
            if durable:
                os.fsync(f.fileno())
    if durable:
        _fsync_dir(tmp)
    # The old folder is renamed aside, not deleted, until the new one is in place: a crash between
    # the two renames leaves one whole copy (under the `.old-` name).
    aside = dest.with_name(f".old-{dest.name}")
    if dest.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(dest, aside)
    os.replace(tmp, dest)
    if durable:
        _fsync_dir(dest.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return dest


def _fsync_dir(folder: Path) -> None:
    """Puts a folder's entries (names created or renamed into it) on the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
