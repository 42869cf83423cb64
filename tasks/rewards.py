"""Reward script of the built-in `reverse` task: `rlfleet reward-server --script tasks/rewards.py`.

An ordinary TRL-style reward script (batch form): each function takes the prompts, the completions
and the dataset's columns as keyword arguments, and returns one float per completion.

>>> accuracy(["reverse:abc"], ["cba"], answer=["cba"])
[1.0]
>>> similarity(["reverse:abcd"], ["dcab"], answer=["dcba"])
[0.5]
"""

from __future__ import annotations


def accuracy(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals the answer exactly, else 0.0."""
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer, strict=True)]


def similarity(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float]:
    """Fraction of positions where completion and answer agree, over the longer of the two (0 for empty output)."""
    scores = []
    for completion, gold in zip(completions, answer, strict=True):
        text = completion.strip()
        longest = max(len(text), len(gold))
        scores.append(sum(x == y for x, y in zip(text, gold, strict=False)) / longest if text and longest else 0.0)
    return scores
