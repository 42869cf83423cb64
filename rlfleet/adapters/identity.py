"""Base-model identity: a model folder's fingerprint, so an adapter trained on one base is never served on another."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path


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
