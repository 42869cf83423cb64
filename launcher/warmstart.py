"""Supervised warm-start of the tiny demo model: the visible first phase of `rlfleet up` on the built-in task.

A randomly initialised model never produces a correct answer, so RL on it has no signal (every
group's rewards are equal and every GRPO advantage is 0). A short, deliberately incomplete
supervised phase teaches the answer format and part of the rule; RL then has to do the rest. The
phase is plain PyTorch on the full tiny model (3 M parameters): seconds on two CPU cores.
Real models skip it (`--warmstart-steps 0`). `rlfleet warm-start` runs this phase alone (the
compose clusters' one-shot `warm-start` service).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from learner.pipeline.dataset import PromptRow, load_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartResult:
    path: Path
    steps: int
    final_loss: float
    seconds: float


def _encode(tokenizer, row: PromptRow) -> tuple[list[int], list[int]]:
    """Prompt ids (chat-rendered) and answer ids + EOS."""
    messages = row.prompt if isinstance(row.prompt, list) else [{"role": "user", "content": row.prompt}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(row.answer or "", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, answer_ids


# Token ids, and which of them the loss trains on.
Example = tuple[list[int], list[bool]]


def warm_start(model_dir: str | Path, out_dir: str | Path, rows: list[PromptRow], steps: int,
               lr: float = 1e-3, batch_size: int = 32, seed: int = 0) -> WarmStartResult:
    """Fine-tunes all weights on (prompt -> answer) for `steps` steps; loss on answer tokens only."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = [(p + a, [False] * len(p) + [True] * len(a)) for p, a in (_encode(tokenizer, row) for row in rows)]
    return warm_start_examples(model_dir, out_dir, examples, steps, lr, batch_size, seed)


def warm_start_examples(model_dir: str | Path, out_dir: str | Path, examples: list[Example], steps: int,
                        lr: float = 1e-3, batch_size: int = 32, seed: int = 0) -> WarmStartResult:
    """Fine-tunes all weights on `examples` for `steps` steps (loss on the trained tokens); saves to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss_value = float("nan")
    for step in range(steps):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        width = max(len(tokens) for tokens, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)      # [B, L]
        labels = torch.full((len(batch), width), -100)                      # [B, L]; -100 = ignored
        attention = torch.zeros((len(batch), width), dtype=torch.long)      # [B, L]
        for i, (tokens, trained) in enumerate(batch):
            ids[i, :len(tokens)] = torch.tensor(tokens)
            labels[i, :len(tokens)] = torch.where(torch.tensor(trained), torch.tensor(tokens), -100)
            attention[i, :len(tokens)] = 1
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step % 50 == 0 or step == steps - 1:
            log.info("warm-start step %d/%d loss %.3f", step + 1, steps, loss_value)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return WarmStartResult(out, steps, loss_value, time.perf_counter() - start)


def _already_done(out: Path, settings: dict) -> bool:
    """True when `out` holds a finished warm-start with these settings (a one-shot service runs again on `up`)."""
    marker = out / "rlfleet_warmstart.json"
    return marker.exists() and json.loads(marker.read_text()).get("settings") == settings


def main(argv: list[str] | None = None) -> int:
    """`rlfleet warm-start --model DIR --out DIR`: the warm-start phase alone (compose runs it as a one-shot)."""
    import argparse

    parser = argparse.ArgumentParser(prog="rlfleet warm-start", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model folder to start from")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the warm-started model into")
    parser.add_argument("--dataset", default="builtin:reverse",
                        help="prompts with answers: builtin:NAME or a JSONL/Parquet/CSV file with prompt and answer columns")
    parser.add_argument("--steps", type=int, default=130, help="supervised steps (130 is what `rlfleet up` runs)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and of the dataset split")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no Hugging Face model there (no config.json)")
    if args.steps < 1 or args.lr <= 0:
        parser.error("--steps must be >= 1 and --lr > 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = {"model": str(args.model), "dataset": args.dataset, "steps": args.steps, "lr": args.lr,
                "seed": args.seed}
    if _already_done(args.out, settings):
        print(f"warm-start: {args.out} already holds this warm-start; nothing to do", flush=True)
        return 0
    try:
        rows, _ = load_rows(args.dataset, seed=args.seed)
    except ValueError as err:
        parser.error(f"--dataset: {err}")
    print(f"warm-start: {args.steps} supervised steps on {args.dataset} ({len(rows)} rows) from {args.model}",
          flush=True)
    # Written beside `out` and renamed into place: services that load `out` never see half a model.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".warmstart-", dir=args.out.parent))
    result = warm_start(args.model, staging, rows, args.steps, lr=args.lr, seed=args.seed)
    (staging / "rlfleet_warmstart.json").write_text(json.dumps(
        {"settings": settings, "final_loss": result.final_loss, "seconds": result.seconds}, indent=1) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    print(f"warm-start: done in {result.seconds:.0f}s, final loss {result.final_loss:.3f}; wrote {args.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
