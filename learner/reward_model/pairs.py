"""Preference pairs for reward-model training: a built-in set or a local JSONL / Parquet file, split by prompt."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlfleet.config import ConfigError
from tasks.preferences import PreferencePair, builtin_pairs

COLUMNS = ("prompt", "chosen", "rejected")


def load_pairs(source: str) -> list[PreferencePair]:
    """`builtin:NAME` or a .jsonl / .parquet file of records with text columns prompt, chosen, rejected."""
    if source.startswith("builtin:"):
        try:
            return builtin_pairs(source.split(":", 1)[1])
        except ValueError as err:
            raise ConfigError(f"--pairs: {err}") from None
    path = Path(source)
    if path.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"--pairs: {source!r}: expected builtin:NAME or a .jsonl / .parquet file")
    if not path.is_file():
        raise ConfigError(f"--pairs: {source!r}: {'is a folder' if path.is_dir() else 'no such file'}")
    records = _parquet(path) if path.suffix == ".parquet" else _jsonl(path)
    pairs = [_pair(record, f"{source} record {i}") for i, record in enumerate(records, 1)]
    if not pairs:
        raise ConfigError(f"--pairs: {source!r} holds no pairs")
    return pairs


def _jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"--pairs: {path} line {number} is not JSON ({err.msg})") from None
    return records


def _parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path).to_pylist()
    except pyarrow.ArrowException as err:
        raise ConfigError(f"--pairs: {path} is not a readable Parquet file ({err})") from None


def _pair(record: object, where: str) -> PreferencePair:
    if not isinstance(record, dict):
        raise ConfigError(f"--pairs: {where} is not an object")
    for column in COLUMNS:
        if not isinstance(record.get(column), str):
            raise ConfigError(f"--pairs: {where} has no text column {column!r} (needs {', '.join(COLUMNS)})")
    return PreferencePair(record["prompt"], record["chosen"], record["rejected"])


def split_by_prompt(pairs: list[PreferencePair], eval_fraction: float, seed: int
                    ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held_out): the pairs of a random eval_fraction of the prompts are held out, so held-out
    accuracy measures prompts the model never saw (at least one prompt on each side when there are two)."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    count = min(max(1, round(eval_fraction * len(prompts))), max(len(prompts) - 1, 0))
    held_out = set(prompts[:count])
    return [p for p in pairs if p.prompt not in held_out], [p for p in pairs if p.prompt in held_out]
