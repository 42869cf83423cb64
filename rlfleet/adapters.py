"""LoRA adapters on the wire: one PEFT adapter <-> a stream of AdapterChunk messages, and base-model identity.

The learner serialises an adapter once (`adapter_from_dir`), streams it to every generator
(`to_chunks`), and generators reassemble and verify it (`AdapterAssembler`) before writing it
atomically (`write_adapter_dir`) and loading it into their engine. `base_model_id` fingerprints a
model folder so that an adapter trained on one base model is never served on another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rlfleet.errors import InvalidRequest
from rlfleet.v1 import common_pb2

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class AdapterPayload:
    """A PEFT LoRA adapter in memory: config JSON, safetensors bytes, and the policy version it is."""

    policy_version: int
    base_model_id: str
    config_json: str
    weights: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.weights).hexdigest()

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


def adapter_from_dir(path: str | Path, policy_version: int, base_model_id: str) -> AdapterPayload:
    """Reads a folder written by PEFT's `save_pretrained` (safetensors format)."""
    path = Path(path)
    return AdapterPayload(policy_version, base_model_id, (path / CONFIG_FILE).read_text(),
                          (path / WEIGHTS_FILE).read_bytes())


def write_adapter_dir(payload: AdapterPayload, dest: str | Path) -> Path:
    """Writes the adapter as a PEFT folder atomically: readers see the whole folder or none of it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    (tmp / CONFIG_FILE).write_text(payload.config_json)
    with open(tmp / WEIGHTS_FILE, "wb") as f:
        f.write(payload.weights)
        f.flush()
        os.fsync(f.fileno())
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def to_chunks(payload: AdapterPayload, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[common_pb2.AdapterChunk]:
    """The header message, then the weights in slices of at most `chunk_bytes`."""
    header = common_pb2.AdapterHeader(
        policy_version=payload.policy_version, base_model_id=payload.base_model_id,
        adapter_config_json=payload.config_json, total_bytes=len(payload.weights), sha256=payload.sha256)
    yield common_pb2.AdapterChunk(header=header)
    view = memoryview(payload.weights)
    for start in range(0, len(view), chunk_bytes):
        yield common_pb2.AdapterChunk(data=bytes(view[start:start + chunk_bytes]))


class AdapterAssembler:
    """Rebuilds an AdapterPayload from chunks, checking order, size and checksum as they arrive."""

    def __init__(self, max_bytes: int = 4 * 1024**3):
        self.max_bytes = max_bytes
        self.header: common_pb2.AdapterHeader | None = None
        self._parts: list[bytes] = []
        self._received = 0
        self._digest = hashlib.sha256()  # hashed as chunks arrive, overlapping the transfer

    def add(self, chunk: common_pb2.AdapterChunk) -> None:
        kind = chunk.WhichOneof("part")
        if self.header is None:
            if kind != "header":
                raise InvalidRequest("chunks[0].header", "the first chunk must be the adapter header")
            self._check_header(chunk.header)
            self.header = chunk.header
            return
        if kind != "data":
            raise InvalidRequest("chunks.header", "only the first chunk may carry a header")
        self._received += len(chunk.data)
        if self._received > self.header.total_bytes:
            raise InvalidRequest("chunks.data", f"more than header.total_bytes={self.header.total_bytes} bytes sent")
        self._parts.append(chunk.data)
        self._digest.update(chunk.data)

    def _check_header(self, header: common_pb2.AdapterHeader) -> None:
        if header.policy_version < 1:
            raise InvalidRequest("header.policy_version", "must be >= 1 (0 is the base model)")
        if header.total_bytes == 0 or header.total_bytes > self.max_bytes:
            raise InvalidRequest("header.total_bytes", f"must be in [1, {self.max_bytes}], got {header.total_bytes}")
        if len(header.sha256) != 64:
            raise InvalidRequest("header.sha256", "must be 64 lower-case hex characters")
        try:
            config = json.loads(header.adapter_config_json)
        except json.JSONDecodeError as err:
            raise InvalidRequest("header.adapter_config_json", f"not JSON: {err.msg}") from None
        if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA" or "r" not in config:
            raise InvalidRequest("header.adapter_config_json", "not a PEFT LoRA config (needs peft_type LORA and r)")

    def finish(self) -> AdapterPayload:
        """The complete payload; raises InvalidRequest when bytes are missing or the checksum differs."""
        if self.header is None:
            raise InvalidRequest("chunks", "empty stream: no adapter header")
        weights = b"".join(self._parts)
        if len(weights) != self.header.total_bytes:
            raise InvalidRequest("chunks.data", f"got {len(weights)} bytes, header.total_bytes={self.header.total_bytes}")
        digest = self._digest.hexdigest()
        if digest != self.header.sha256.lower():
            raise InvalidRequest("header.sha256", f"checksum mismatch: payload hashes to {digest}")
        check_safetensors(weights)
        return AdapterPayload(self.header.policy_version, self.header.base_model_id,
                              self.header.adapter_config_json, weights)


def check_safetensors(data: bytes) -> dict:
    """Parses a safetensors header (8-byte length + JSON); raises InvalidRequest if malformed."""
    if len(data) < 8:
        raise InvalidRequest("chunks.data", "not a safetensors file (shorter than its length prefix)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise InvalidRequest("chunks.data", "not a safetensors file (header longer than the payload)")
    try:
        header = json.loads(data[8:8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("chunks.data", "not a safetensors file (header is not JSON)") from None
    return {k: v for k, v in header.items() if k != "__metadata__"}


def resolve_model_dir(model: str) -> Path:
    """A local folder for a model path or a Hugging Face name (from the local cache or the hub)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


def base_model_id(model: str | Path, fingerprint_bytes: int = 65536) -> str:
    """A short hash of a model folder: its config, tokenizer and the first bytes of every weight file.

    Cheap at any model size (reads config files and 64 KiB per shard) yet tells apart two models of
    the same architecture with different weights.
    """
    folder = resolve_model_dir(str(model))
    digest = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text())
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"):
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json"):
        if (folder / name).exists():
            digest.update(hashlib.sha256((folder / name).read_bytes()).digest())
    for shard in sorted(folder.glob("*.safetensors")):
        with open(shard, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + size)
            digest.update(f.read(fingerprint_bytes))
    return digest.hexdigest()[:16]
