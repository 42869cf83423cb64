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


@dataclass(frozen=True)
class LoadedVersion:
    """One adapter in the engine: a policy version of one learner run, under the engine's own id."""

    run_id: str
    version: int
    adapter_id: int       # the engine's key: unique in this process, never reused (0 = the base model)
    checksum: str
    base_model_id: str
    folder: str = ""      # where its PEFT folder lives under the generator's adapter_dir


BASE = LoadedVersion(run_id="", version=0, adapter_id=0, checksum="", base_model_id="")


class PolicyVersions:
    """Loaded adapter versions, the K newest of which serve new requests, with per-adapter use counts.

    A version leaves the engine only when it is outside the K newest AND no request uses it, so a
    request always finishes on the version it started with (TRL PR #7017's failure mode).

    Versions belong to one learner run (`run_id`): a version number names one set of weights only
    within its run, because a learner restarted from a checkpoint trains versions it may already
    have pushed, with other weights. The first version of a new run makes every version of the
    old one unservable (each is unloaded once no request uses it), whatever the numbers.
    Engine ids are distinct from versions for that reason: two runs' v5 can be loaded at once.
    """

    def __init__(self, keep_versions: int):
        self.keep_versions = keep_versions
        self.run_id: str | None = None        # the run serving new requests; None until the first adapter
        self._loaded: list[LoadedVersion] = []   # this run's, ascending by version
        self._old_runs: list[LoadedVersion] = []  # earlier runs', waiting for their requests to end
        self._in_use: Counter[int] = Counter()   # by adapter_id
        self._next_id = 1
        self.replaced_runs: dict[str, str] = {}   # run id -> the run that replaced it (a learner that
        # outlived its replacement must not take the generators back: no flip-flop between two learners)

    @property
    def newest(self) -> int:
        """The version serving new requests; 0 = the base model."""
        return self._loaded[-1].version if self._loaded else 0

    @property
    def loaded(self) -> list[int]:
        """This run's loaded versions, ascending."""
        return [entry.version for entry in self._loaded]

    @property
    def servable(self) -> list[int]:
        """Versions a new request may ask for: the K newest (0, the base model, always)."""
        return self.loaded[-self.keep_versions:]

    def find(self, run_id: str, version: int) -> LoadedVersion | None:
        """The loaded version `version` of run `run_id`, if the engine holds it for the current run."""
        if run_id != self.run_id:
            return None
        return next((entry for entry in self._loaded if entry.version == version), None)

    def new_entry(self, run_id: str, version: int, checksum: str, base_model_id: str) -> LoadedVersion:
        """A LoadedVersion with a fresh engine id (for `add` once the engine has loaded it)."""
        adapter_id, self._next_id = self._next_id, self._next_id + 1
        return LoadedVersion(run_id, version, adapter_id, checksum, base_model_id, f"a{adapter_id:06d}-v{version}")

    def acquire(self, version: int | None) -> LoadedVersion:
        """Marks a request as using `version` (None = newest) and returns it; NotFound if not servable."""
        chosen = self.newest if version is None else version
        if chosen == 0:
            entry = BASE
        elif chosen in self.servable:
            entry = next(e for e in self._loaded if e.version == chosen)
        else:
            raise NotFound(f"policy_version: {chosen} is not loaded; servable versions: {[0, *self.servable]}")
        self._in_use[entry.adapter_id] += 1
        return entry

    def release(self, entry: LoadedVersion) -> None:
        self._in_use[entry.adapter_id] -= 1
        if self._in_use[entry.adapter_id] <= 0:
            del self._in_use[entry.adapter_id]

    def add(self, entry: LoadedVersion) -> list[int]:
        """Makes `entry` the newest version; returns the versions of the run it replaces (if it starts a new one)."""
        dropped = []
        if entry.run_id != self.run_id:
            dropped = self.loaded
            self._old_runs += self._loaded
            if self.run_id is not None:
                self.replaced_runs[self.run_id] = entry.run_id
            self._loaded, self.run_id = [], entry.run_id
        elif entry.version <= self.newest:
            raise ValueError(f"version {entry.version} is not newer than {self.newest}")
        self._loaded.append(entry)
        return dropped

    def retirable(self) -> list[LoadedVersion]:
        """Adapters outside this run's K newest, or of an earlier run, that no request uses: safe to unload now."""
        candidates = self._old_runs + self._loaded[:-self.keep_versions]
        return [entry for entry in candidates if self._in_use[entry.adapter_id] == 0]

    def remove(self, entry: LoadedVersion) -> None:
        if entry in self._old_runs:
            self._old_runs.remove(entry)
        else:
            self._loaded.remove(entry)

    def in_use(self, version: int) -> int:
        """Requests using this run's `version` (0 = the base model)."""
        entry = BASE if version == 0 else next((e for e in self._loaded if e.version == version), None)
        return self._in_use[entry.adapter_id] if entry is not None else 0

    @property
    def engine_count(self) -> int:
        """Adapters the engine holds, of every run."""
        return len(self._loaded) + len(self._old_runs)
