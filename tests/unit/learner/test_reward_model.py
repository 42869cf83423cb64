"""`rlfleet train-rm`: reading and splitting preference pairs, the built-in set, and training one that the reward server serves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from learner.reward_model.pairs import load_pairs, split_by_prompt
from rlfleet.config import ConfigError
from tasks.preferences import PreferencePair, builtin_pairs, demo_reward

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[3] / ".venv" / "torch_extensions"))


def test_builtin_pairs_are_ranked_by_the_demo_reward():
    # reverse:abcd -> answer dcba (reward 1 + 0.5 * 1 = 1.5); dcab agrees on 2 of 4 positions: 0.5 * 0.5 = 0.25
    assert demo_reward("reverse:abcd", "dcba", "dcba") == 1.5
    assert demo_reward("reverse:abcd", "dcab", "dcba") == 0.25
    pairs = builtin_pairs(prompts=50)
    assert len({p.prompt for p in pairs}) == 50
    for pair in pairs:
        answer = pair.prompt.split(":", 1)[1][::-1]
        assert demo_reward(pair.prompt, pair.chosen, answer) >= demo_reward(pair.prompt, pair.rejected, answer) + 0.25
    assert sum(p.chosen == p.prompt.split(":", 1)[1][::-1] for p in pairs) >= 50 * 4  # the answer beats its corruptions


def test_pairs_from_jsonl_and_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    records = [{"prompt": "q1", "chosen": "good", "rejected": "bad", "extra": 1},
               {"prompt": "q2", "chosen": "yes", "rejected": "no"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                           for r in records]), tmp_path / "p.parquet")
    expected = [PreferencePair("q1", "good", "bad"), PreferencePair("q2", "yes", "no")]
    assert load_pairs(str(tmp_path / "p.jsonl")) == expected
    assert load_pairs(str(tmp_path / "p.parquet")) == expected


@pytest.mark.parametrize(("content", "name", "message"), [
    ('{"prompt": "q", "chosen": "a"}\n', "p.jsonl", "record 1 has no text column 'rejected'"),
    ('{"prompt": "q", "chosen": "a", "rejected": 3}\n', "p.jsonl", "no text column 'rejected'"),
    ("not json\n", "p.jsonl", "line 1 is not JSON"),
    ("", "p.jsonl", "holds no pairs"),
    ("a,b\n", "p.csv", "expected builtin:NAME or a .jsonl / .parquet file"),
])
def test_bad_pair_files_name_the_option_and_the_problem(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_pairs(str(tmp_path / name))
    assert str(err.value).startswith("--pairs:")


def test_missing_file_and_unknown_builtin(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_pairs(str(tmp_path / "none.jsonl"))
    with pytest.raises(ConfigError, match="unknown built-in task"):
        load_pairs("builtin:sorting")


def test_split_holds_out_whole_prompts():
    pairs = [PreferencePair(f"q{i}", "a", f"b{j}") for i in range(20) for j in range(3)]
    train, held_out = split_by_prompt(pairs, 0.25, seed=3)
    assert len(held_out) == 5 * 3 and len(train) == 15 * 3
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}
    assert split_by_prompt(pairs, 0.25, seed=3) == (train, held_out)  # seeded
