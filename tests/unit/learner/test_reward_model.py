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


@pytest.mark.slow  # ~2 min on an idle 2-core machine: 130 + 300 warm-start steps, 400 reward-model steps
@pytest.mark.timeout(1800)  # guards for a busy machine
def test_the_builtin_recipe_trains_a_reward_model_the_reward_server_serves(tiny_model_dir, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.algorithms import RM_TRAIN_ARGS
    from launcher.warmstart import warm_start
    from learner.pipeline.dataset import builtin_rows
    from reward_server.model import RewardModel
    from rlfleet import cli
    from rlfleet.reward_input import reward_model_split

    # RLHF trains its reward model from a converged SFT model: the demo's 130-step warm-start, continued
    rows, _ = builtin_rows("reverse")
    warm = warm_start(tiny_model_dir, tmp_path / "warm", rows, 130, seed=0).path
    base = warm_start(warm, tmp_path / "sft", rows, 300, seed=1).path  # loss ~0.4 -> ~0.05
    out = tmp_path / "rm"
    code = cli.main(["train-rm", "--model", str(base), "--out", str(out), *RM_TRAIN_ARGS, "--max-steps", "400",
                     "--log-every", "100"])
    assert code == 0 and "held-out accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    # measured: 1.000 -> 0.998 (the converged SFT model's mean log-probability already ranks the built-in pairs)
    assert metrics["held_out_accuracy"] >= 0.9, metrics
    assert json.loads((out / "config.json").read_text())["rlfleet_reward_score"] == "mean_logprob"
    # the folder is served as is: the reward server's model agrees with train-rm on the held-out pairs
    _, held_out = split_by_prompt(load_pairs("builtin:reverse"), 0.1, seed=0)
    model = RewardModel(out)
    assert model.likelihood
    chosen = model.score_items([p.prompt for p in held_out], [p.chosen for p in held_out])
    rejected = model.score_items([p.prompt for p in held_out], [p.rejected for p in held_out])
    served = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)
    assert served == pytest.approx(metrics["held_out_accuracy"], abs=2e-3)
    # and its score is the causal LM's mean log-probability of the completion's tokens, end of turn included
    tokenizer, lm = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    ids, start = reward_model_split(tokenizer, "reverse:abc", "cba")
    with torch.no_grad():
        logprobs = lm(torch.tensor([ids])).logits[0].log_softmax(-1)  # [T, V]
    by_hand = sum(float(logprobs[t - 1, ids[t]]) for t in range(start, len(ids))) / (len(ids) - start)
    assert model.score_items(["reverse:abc"], ["cba"])[0] == pytest.approx(by_hand, abs=1e-4)


@pytest.mark.slow
def test_a_classifier_reward_model_is_served_as_trained(tiny_model_dir, tmp_path, capsys):
    from reward_server.model import RewardModel
    from rlfleet import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p.__dict__) + "\n" for p in builtin_pairs(prompts=40)))
    out = tmp_path / "rm"
    code = cli.main(["train-rm", "--model", tiny_model_dir, "--pairs", str(pairs), "--out", str(out), "--max-steps", "5",
                     "--eval-fraction", "0.25"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "rlfleet_reward_score" not in json.loads((out / "config.json").read_text())
    _, held_out = split_by_prompt(load_pairs(str(pairs)), 0.25, seed=0)
    model = RewardModel(out)
    assert not model.likelihood and len(held_out) == metrics["held_out_pairs"]
    chosen = model.score_items([p.prompt for p in held_out], [p.chosen for p in held_out])
    rejected = model.score_items([p.prompt for p in held_out], [p.rejected for p in held_out])
    served = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)
    assert served == pytest.approx(metrics["held_out_accuracy"], abs=1e-9)
