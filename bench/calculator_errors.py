"""What the calculator demo's greedy policy gets wrong: replays its held-out trajectories and sorts each miss by kind.

    python -m bench.calculator_errors RUN_DIR [--rows 64]

Replays `rlfleet up --env builtin:calculator`'s held-out rows greedily with transformers, the
warm-started model (RUN_DIR/models/warm) and then with the trained adapter (RUN_DIR/adapter), as
the multi-turn driver plays them: the model's turn, the calculator's answer rendered by the chat
template, the model's answer. Each row is `ok`, `bad_copy` (the tool was called with the prompt's
expression and its answer copied wrong), `bad_arg` (called with another expression), or `no_tool`
(answered straight away, wrongly). The accuracy it prints matches the generator's greedy held-out
accuracy (bench/README.md, issue 19).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def replay(model, renderer, rows, examples: int = 8) -> tuple[collections.Counter, list[tuple]]:
    """Counts of each kind over `rows`, and the first `examples` misses as (prompt, answer, call, tool, reply, kind)."""
    import torch

    from tasks.calculator_env import evaluate

    def generate(ids: list[int]) -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                 eos_token_id=renderer.eos_id, pad_token_id=renderer.eos_id)
        return out[0, len(ids):].tolist()

    def text(ids: list[int]) -> str:
        return renderer.tokenizer.decode([t for t in ids if t != renderer.eos_id]).strip()

    kinds: collections.Counter = collections.Counter()
    misses = []
    for row in rows:
        prompt = renderer.prompt([{"role": "user", "content": row.prompt}])
        turn = generate(prompt)
        call = text(turn)
        if call.startswith("calc(") and call.endswith(")"):
            try:
                tool = str(evaluate(call[5:-1]))
            except ValueError as err:
                tool = f"error: {err}"
            reply = text(generate(prompt + turn + renderer.after_turn(turn, [{"role": "tool", "content": tool}])))
            kind = "ok" if reply == row.answer else "bad_copy" if call[5:-1] == row.prompt else "bad_arg"
        else:
            tool, reply = "", call
            kind = "ok" if reply == row.answer else "no_tool"
        kinds[kind] += 1
        if kind != "ok" and len(misses) < examples:
            misses.append((row.prompt, row.answer, call, tool, reply, kind))
    return kinds, misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calculator_errors", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished `rlfleet up --env builtin:calculator` run directory")
    parser.add_argument("--rows", type=int, default=64, help="held-out rows (rlfleet up's --eval-rows)")
    args = parser.parse_args(argv)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from learner.pipeline.dataset import load_rows
    from learner.pipeline.turns import TurnRenderer

    warm = args.run_dir / "models" / "warm"
    if not (warm / "config.json").is_file():
        parser.error(f"run_dir: {warm} holds no model (a run of `rlfleet up --env builtin:calculator`?)")
    _, rows = load_rows("builtin:calculator", "prompt", "answer", 0.1, 0)  # rlfleet up's held-out split, seed 0
    renderer = TurnRenderer.from_pretrained(str(warm))
    models = {"before (warm-start)": AutoModelForCausalLM.from_pretrained(warm)}
    if (args.run_dir / "adapter" / "adapter_config.json").is_file():
        models["after (adapter)"] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(warm),
                                                              args.run_dir / "adapter")
    for name, model in models.items():
        kinds, misses = replay(model.eval(), renderer, rows[:args.rows])
        print(f"{name}: accuracy {kinds['ok'] / max(sum(kinds.values()), 1):.3f}, {dict(kinds)}")
        for miss in misses:
            print("   prompt {} answer {} call {!r} tool {!r} reply {!r}: {}".format(*miss))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
