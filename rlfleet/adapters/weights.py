"""What a received adapter must be before it is written or loaded: a well-formed safetensors file of finite floats, a sane LoRA config.

One non-finite number is enough to poison a generator: an adapter with `lora_alpha = NaN` or a NaN
weight made vLLM return NaN log-probs for every adapter batched beside it, and for the base model,
until it was unloaded (vLLM's batched LoRA kernels add every slot's product, and NaN x 0 is NaN).
So every value is checked here, at the door, and each problem names the field or tensor.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from rlfleet.errors import InvalidRequest

WEIGHTS_FIELD = "adapter_model.safetensors"
# Little-endian, as safetensors stores them; BF16 has no numpy type and is checked on its bits.
_FLOATS = {"F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_BF16_EXPONENT = 0x7F80   # all exponent bits set: inf or NaN
# PEFT's scaling is lora_alpha / r (alpha / sqrt(r) with rsLoRA), 0.5 to 16 in published configs;
# 1024 leaves room for any real one while 1e30 (finite) would still overflow fp16/bf16 activations.
MAX_LORA_SCALING = 1024.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _header_size(head: bytes, total: int) -> int:
    if total < 8:
        raise InvalidRequest("chunks.data", "not a safetensors file (shorter than its length prefix)")
    (size,) = struct.unpack("<Q", head[:8])
    if size > total - 8:
        raise InvalidRequest("chunks.data", "not a safetensors file (header longer than the payload)")
    return size


def check_safetensors(data: bytes) -> dict:
    """Parses a safetensors header (8-byte length + JSON object); raises InvalidRequest naming what is malformed.

    `data` may be just the file's beginning, as long as it holds the whole header. Returns the
    tensor table (name -> {dtype, shape, data_offsets}) without `__metadata__`.
    """
    size = _header_size(data, len(data))
    try:
        header = json.loads(data[8:8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("chunks.data", "not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidRequest(f"{WEIGHTS_FIELD}.header", f"must be a JSON object, got a {type(header).__name__}")
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            if not isinstance(meta, dict):
                raise InvalidRequest(f"{WEIGHTS_FIELD}[__metadata__]", "must be a JSON object")
            continue
        tensors[name] = _check_entry(f"{WEIGHTS_FIELD}[{name}]", meta)
    return tensors


def _check_entry(where: str, meta) -> dict:
    if not isinstance(meta, dict):
        raise InvalidRequest(where, f"header entry must be a JSON object, got a {type(meta).__name__}")
    if not isinstance(meta.get("dtype"), str):
        raise InvalidRequest(f"{where}.dtype", "must be a string")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidRequest(f"{where}.shape", f"must be a list of non-negative integers, got {shape!r}")
    offsets = meta.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise InvalidRequest(f"{where}.data_offsets", f"must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    return meta


def check_weights(data: bytes | memoryview | Path) -> dict:
    """The whole safetensors file (bytes, or a file): its header as `check_safetensors` checks it, and
    every tensor a float type whose bytes lie inside the file, match its shape, and are all finite.

    Returns the tensor table. Reads a file through a memory map (no copy).
    """
    if isinstance(data, Path):
        total = data.stat().st_size
        with open(data, "rb") as f:
            head = f.read(8)
            head += f.read(_header_size(head, total))
        raw = np.memmap(data, dtype=np.uint8, mode="r") if total else np.zeros(0, np.uint8)
    else:
        raw = np.frombuffer(data, dtype=np.uint8)
        head = bytes(raw[:8 + _header_size(bytes(raw[:8]), len(raw))])
    table = check_safetensors(head)
    body = raw[len(head):]
    for name, meta in table.items():
        _check_tensor_data(f"{WEIGHTS_FIELD}[{name}]", meta, body)
    return table


def _check_tensor_data(where: str, meta: dict, body: np.ndarray) -> None:
    dtype = _FLOATS.get(meta["dtype"])
    if dtype is None:
        raise InvalidRequest(f"{where}.dtype", f"{meta['dtype']}: a LoRA weight is F16, BF16, F32 or F64")
    begin, end = meta["data_offsets"]
    expected = math.prod(meta["shape"]) * dtype.itemsize
    if end - begin != expected or end > len(body):
        raise InvalidRequest(f"{where}.data_offsets", f"{meta['data_offsets']} do not hold {expected} bytes of "
                                                       f"shape {meta['shape']} inside the {len(body)}-byte data")
    values = body[begin:end].view(dtype)
    if meta["dtype"] == "BF16":
        finite = not bool(((values & _BF16_EXPONENT) == _BF16_EXPONENT).any())
    else:
        # A float sum is finite unless an element is not, or the sum overflows: the exact (slower,
        # memory-hungry) test runs only then. 320 MiB of F32 sums in ~35 ms on this machine.
        with np.errstate(over="ignore", invalid="ignore"):
            finite = bool(np.isfinite(values.sum())) or bool(np.isfinite(values).all())
    if not finite:
        raise InvalidRequest(where, "holds NaN or infinite values")


def check_lora_config(config: dict, where: str = "header.adapter_config_json") -> None:
    """A PEFT LoRA config's numbers: r (and rank_pattern's) integers >= 1; lora_alpha (and alpha_pattern's)
    finite, giving a scaling within +-MAX_LORA_SCALING at the smallest rank; use_rslora a boolean."""
    rank = config.get("r")
    if not _is_int(rank) or rank < 1:
        raise InvalidRequest(f"{where}.r", f"must be an integer >= 1, got {rank!r}")
    patterns = {}
    for key in ("rank_pattern", "alpha_pattern"):
        patterns[key] = config.get(key) or {}
        if not isinstance(patterns[key], dict):
            raise InvalidRequest(f"{where}.{key}", "must be a JSON object (module name -> number)")
    for module, value in patterns["rank_pattern"].items():
        if not _is_int(value) or value < 1:
            raise InvalidRequest(f"{where}.rank_pattern[{module}]", f"must be an integer >= 1, got {value!r}")
    rslora = config.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise InvalidRequest(f"{where}.use_rslora", f"must be true or false, got {rslora!r}")
    smallest = min([rank, *patterns["rank_pattern"].values()])
    alphas = {"lora_alpha": config.get("lora_alpha", 8)}   # PEFT's default
    alphas.update({f"alpha_pattern[{m}]": a for m, a in patterns["alpha_pattern"].items()})
    for name, alpha in alphas.items():
        if not _is_real(alpha) or not math.isfinite(alpha):
            raise InvalidRequest(f"{where}.{name}", f"must be a finite number, got {alpha!r}")
        scaling = alpha / (math.sqrt(smallest) if rslora else smallest)
        if abs(scaling) > MAX_LORA_SCALING:
            raise InvalidRequest(f"{where}.{name}", f"{alpha} gives a LoRA scaling of {scaling:g} at rank "
                                                    f"{smallest}, beyond +-{MAX_LORA_SCALING:g}")
