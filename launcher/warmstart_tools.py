"""Supervised warm-start for tool use: the visible first phase of `rlfleet up --env builtin:calculator`.

The tiny model has never seen a tool call. This phase shows it whole conversations, rendered token by
token exactly as the multi-turn driver renders them (learner/pipeline/turns.py): some rows solved by
calling the calculator (`calc(37*58)`, the tool's answer, the answer repeated), the rest answered
straight away, where the tiny model can only guess. It learns both habits; RL has to find out that
the tool pays (the tool-call rate and the held-out accuracy rise). Loss on the model's turns only.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from launcher.warmstart import WarmStartResult
from learner.pipeline.dataset import PromptRow
from learner.pipeline.turns import TurnRenderer

log = logging.getLogger(__name__)

Example = tuple[list[int], list[bool]]   # token ids, and which of them the loss trains on


def calculator_examples(renderer: TurnRenderer, rows: list[PromptRow], tool_fraction: float,
                        seed: int = 0) -> list[Example]:
    """One conversation per row: with probability `tool_fraction` the tool is called, else the answer is given."""
    rng = random.Random(seed)
    tokenizer, eos = renderer.tokenizer, renderer.eos_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    examples = []
    for row in rows:
        prompt = renderer.prompt([{"role": "user", "content": row.prompt}])
        answer = ids(row.answer or "") + [eos]
        if rng.random() < tool_fraction:
            call = ids(f"calc({row.prompt})") + [eos]
            observation = renderer.after_turn(call, [{"role": "tool", "content": row.answer or ""}])
            tokens = prompt + call + observation + answer
            trained = [False] * len(prompt) + [True] * len(call) + [False] * len(observation) + [True] * len(answer)
        else:
            tokens = prompt + answer
            trained = [False] * len(prompt) + [True] * len(answer)
        examples.append((tokens, trained))
    return examples


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
