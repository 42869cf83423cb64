"""Policy versions: which LoRA adapters are loaded, which requests use them, and whether an adapter fits the model."""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlfleet.adapters import AdapterPayload
from rlfleet.errors import NotFound, Rejected

# PEFT names a LoRA tensor "base_model.model.<module>.lora_A.weight" (or lora_B).
_LORA_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


@dataclass(frozen=True)
class BaseModelShapes:
    """The linear layers of the base model, by module name: (out_features, in_features)."""

    linear: dict[str, tuple[int, int]]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> BaseModelShapes:
        """Reads the safetensors headers of every shard (no weights are loaded)."""
        linear: dict[str, tuple[int, int]] = {}
        for shard in sorted(Path(model_dir).glob("*.safetensors")):
            with open(shard, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for name, meta in header.items():
                if name.endswith(".weight") and isinstance(meta, dict) and len(meta.get("shape", ())) == 2:
                    linear[name.removesuffix(".weight")] = tuple(meta["shape"])
        return cls(linear)

    @property
    def module_kinds(self) -> set[str]:
        """Last name component of every linear layer (q_proj, down_proj, lm_head, ...)."""
        return {name.rsplit(".", 1)[-1] for name in self.linear}


def check_adapter(payload: AdapterPayload, base_model_id: str, shapes: BaseModelShapes, max_rank: int) -> None:
    """Raises Rejected, naming what is wrong, unless the adapter is a LoRA of this base model within max_rank."""
    if payload.base_model_id != base_model_id:
        raise Rejected(f"header.base_model_id: adapter was trained on base model {payload.base_model_id!r}, "
                       f"this generator serves {base_model_id!r}")
    config = payload.config
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= max_rank:
        raise Rejected(f"adapter_config_json.r: rank {rank!r} is outside [1, {max_rank}] (the generator's max_lora_rank)")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted(set(targets) - shapes.module_kinds)
    if not targets or unknown:
        raise Rejected(f"adapter_config_json.target_modules: {unknown or 'empty'} not among the model's linear "
                       f"layers {sorted(shapes.module_kinds)}")
    tensors = payload.tensor_table()
    if not tensors:
        raise Rejected("adapter_model.safetensors: holds no tensors")
    for name, meta in tensors.items():
        _check_tensor(name, list(meta.get("shape", [])), rank, set(targets), shapes)


def _check_tensor(name: str, shape: list[int], rank: int, targets: set[str], shapes: BaseModelShapes) -> None:
    match = _LORA_TENSOR.match(name)
    if match is None:
        raise Rejected(f"adapter_model.safetensors[{name}]: not a LoRA A/B tensor (only LoRA weights are served)")
    module = match["module"]
    if module not in shapes.linear or module.rsplit(".", 1)[-1] not in targets:
        raise Rejected(f"adapter_model.safetensors[{name}]: {module} is not a targeted linear layer of the base model")
    out_features, in_features = shapes.linear[module]
    expected = [rank, in_features] if match["ab"] == "A" else [out_features, rank]
    if shape != expected:
        raise Rejected(f"adapter_model.safetensors[{name}]: shape {shape}, expected {expected} "
                       f"(rank {rank}, layer {out_features}x{in_features})")


class PolicyVersions:
    """Loaded adapter versions, the K newest of which serve new requests, with per-version use counts.

    A version leaves the engine only when it is outside the K newest AND no request uses it, so a
    request always finishes on the version it started with (TRL PR #7017's failure mode).
    """

    def __init__(self, keep_versions: int):
        self.keep_versions = keep_versions
        self._loaded: list[int] = []          # ascending
        self._in_use: Counter[int] = Counter()

    @property
    def newest(self) -> int:
        """The version serving new requests; 0 = the base model."""
        return self._loaded[-1] if self._loaded else 0

    @property
    def loaded(self) -> list[int]:
        return list(self._loaded)

    @property
    def servable(self) -> list[int]:
        """Versions a new request may ask for: the K newest (0, the base model, always)."""
        return self._loaded[-self.keep_versions:]

    def acquire(self, version: int | None) -> int:
        """Marks a request as using `version` (None = newest) and returns it; NotFound if not servable."""
        chosen = self.newest if version is None else version
        if chosen != 0 and chosen not in self.servable:
            raise NotFound(f"policy_version: {chosen} is not loaded; servable versions: {[0, *self.servable]}")
        self._in_use[chosen] += 1
        return chosen

    def release(self, version: int) -> None:
        self._in_use[version] -= 1
        if self._in_use[version] <= 0:
            del self._in_use[version]

    def add(self, version: int) -> None:
        if self._loaded and version <= self._loaded[-1]:
            raise ValueError(f"version {version} is not newer than {self._loaded[-1]}")
        self._loaded.append(version)

    def retirable(self) -> list[int]:
        """Versions outside the K newest that no request uses: safe to unload now."""
        return [v for v in self._loaded[:-self.keep_versions] if self._in_use[v] == 0]

    def remove(self, version: int) -> None:
        self._loaded.remove(version)

    def in_use(self, version: int) -> int:
        return self._in_use[version]
