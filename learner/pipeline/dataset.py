"""Prompt datasets for the pipeline: built-in tasks, reasoning-gym tasks or local JSONL / Parquet / CSV files, with a
resumable cursor."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import TASKS, builtin_items


@dataclass(frozen=True)
class PromptRow:
    """One dataset row: the prompt, its gold answer and any other columns (passed to rewards)."""

    prompt_id: str
    prompt: str | list[dict[str, str]]  # text, or chat messages
    answer: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)


def builtin_rows(name: str, train_size: int = 2000, eval_size: int = 200, seed: int = 1234
                 ) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, eval) rows of a built-in task (`tasks`); the answer is also the `answer` column."""
    train, held_out = builtin_items(name, train_size, eval_size, seed)
    rows = [PromptRow(f"{name}-{i}", p, a, {"answer": a}) for i, (p, a) in enumerate(train + held_out)]
    return rows[:len(train)], rows[len(train):]


REASONING_GYM = "reasoning_gym:"


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError("dataset reasoning_gym:TASK needs the reasoning-gym package (pip install reasoning-gym)") from None
    return reasoning_gym


def reasoning_gym_rows(task: str, train_size: int = 2000, eval_size: int = 200, seed: int = 1234
                       ) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, eval) rows of a reasoning-gym task, generated on the spot (no download).

    The prompt is the task's question; the `reasoning_gym_entry` column carries the whole entry
    (question, answer, metadata) for the built-in `reasoning_gym` reward, which calls the task's own
    `score_answer`. The entry goes through JSON here, as columns do on the wire, so the scorer sees
    in training what it sees in a test.
    """
    entries = list(_reasoning_gym().create_dataset(task, size=train_size + eval_size, seed=seed))
    rows = []
    for i, entry in enumerate(entries):
        entry = json.loads(json.dumps(entry, default=str))
        answer = None if entry.get("answer") is None else str(entry["answer"])
        rows.append(PromptRow(f"{task}-{i}", entry["question"], answer,
                              {"answer": answer, "reasoning_gym_entry": entry}))
    return rows[:train_size], rows[train_size:]


_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _local_file(dataset: str) -> Path:
    path = Path(dataset)
    if path.suffix not in _FORMATS:
        raise ValueError(f"dataset {dataset!r}: expected builtin:NAME, reasoning_gym:TASK or a .jsonl/.json/.parquet/.csv file")
    if not path.is_file():
        raise ValueError(f"dataset {dataset!r}: {'is a folder' if path.is_dir() else 'no such file'}")
    return path


def _first_record_keys(path: Path, dataset: str) -> list[str]:
    """Keys of the first record of a JSON Lines file, or of a file holding one JSON array of records."""
    with open(path, encoding="utf-8") as f:
        number, line = next(((n, text) for n, text in enumerate(f, 1) if text.strip()), (0, ""))
    if line.lstrip().startswith("["):
        records = json.loads(path.read_text(encoding="utf-8"))
        first = records[0] if records else None
    else:
        try:
            first = json.loads(line) if line else None
        except json.JSONDecodeError as err:
            raise ValueError(f"dataset {dataset!r}: line {number} is not JSON ({err.msg})") from None
    return list(first) if isinstance(first, dict) else []


def dataset_columns(dataset: str) -> list[str]:
    """Column names of a local dataset file from its header or first record only (no `datasets` import)."""
    path = _local_file(dataset)
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), [])
        if path.suffix == ".parquet":
            import pyarrow
            import pyarrow.parquet

            try:
                return list(pyarrow.parquet.read_schema(path).names)
            except pyarrow.ArrowException as err:
                raise ValueError(f"dataset {dataset!r}: not a readable Parquet file ({err})") from None
        return _first_record_keys(path, dataset)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"dataset {dataset!r}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"dataset {dataset!r}: not valid JSON ({err})") from None


def check_dataset(dataset: str, prompt_column: str = "prompt") -> None:
    """Raises ValueError naming the file when `dataset` is not a known built-in or lacks `prompt_column`.

    Cheap enough to run before a cluster starts; `load_rows` still reads the whole file later."""
    if dataset.startswith("builtin:"):
        if dataset.split(":", 1)[1] not in TASKS:
            raise ValueError(f"dataset {dataset!r}: unknown built-in task; choose from {sorted(TASKS)}")
        return
    if dataset.startswith(REASONING_GYM):
        tasks = _reasoning_gym().factory.DATASETS
        if dataset[len(REASONING_GYM):] not in tasks:
            raise ValueError(f"dataset {dataset!r}: unknown reasoning-gym task; choose from {sorted(tasks)}")
        return
    columns = dataset_columns(dataset)
    if not columns:
        raise ValueError(f"dataset {dataset!r}: no records (or its first record is not an object)")
    if prompt_column not in columns:
        raise ValueError(f"dataset {dataset!r}: no column {prompt_column!r} (has {columns})")


def load_rows(dataset: str, prompt_column: str = "prompt", answer_column: str = "answer",
              eval_fraction: float = 0.0, seed: int = 0) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, eval) rows; `builtin:NAME` uses tasks, `reasoning_gym:TASK` reasoning-gym, anything else is a local
    file read with `datasets`."""
    if dataset.startswith("builtin:"):
        return builtin_rows(dataset.split(":", 1)[1], seed=1234 + seed)
    if dataset.startswith(REASONING_GYM):
        check_dataset(dataset)
        return reasoning_gym_rows(dataset[len(REASONING_GYM):], seed=1234 + seed)
    path = _local_file(dataset)
    from datasets import load_dataset

    table = load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
    if prompt_column not in table.column_names:
        raise ValueError(f"dataset {dataset!r}: no column {prompt_column!r} (has {table.column_names})")
    rows = [_row(i, record, prompt_column, answer_column) for i, record in enumerate(table)]
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_eval = int(len(rows) * eval_fraction)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _row(index: int, record: dict[str, Any], prompt_column: str, answer_column: str) -> PromptRow:
    columns = {k: v for k, v in record.items() if k != prompt_column}
    answer = record.get(answer_column)
    return PromptRow(prompt_id=str(record.get("id", index)), prompt=record[prompt_column],
                     answer=None if answer is None else str(answer), columns=columns)


@dataclass
class Cursor:
    """Walks the rows in a seeded random order, epoch after epoch; its state goes into checkpoints."""

    rows: list[PromptRow]
    seed: int = 0
    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("the dataset has no training rows")
        self._order = self._shuffled(self.epoch)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self) -> PromptRow:
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._shuffled(self.epoch)
        row = self.rows[self._order[self.index]]
        self.index += 1
        return row

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._shuffled(self.epoch)
