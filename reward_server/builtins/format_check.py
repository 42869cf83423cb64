"""Regex format check: `<think>reasoning</think><answer>answer</answer>` and nothing else."""

from __future__ import annotations

import re

# DeepSeek-R1's format; both blocks must hold non-blank text, so "<think></think>x" fails.
THINK_ANSWER = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
TAGS = re.compile(r"</?(think|answer)>")


def think_answer_format(prompt: str, completion: str, finish_reason: str | None = None, **columns) -> float:
    """1.0 when the completion is exactly one non-empty <think> block then one non-empty <answer> block.

    A truncated completion (finish_reason "length") scores 0 even if its prefix happens to match.

        >>> think_answer_format("q", "<think>2+2 is 4</think><answer>4</answer>")
        1.0
        >>> think_answer_format("q", "<think></think>4")
        0.0
    """
    if finish_reason == "length":
        return 0.0
    match = THINK_ANSWER.fullmatch(completion)
    if not match or not match["think"].strip() or not match["answer"].strip():
        return 0.0
    return 1.0 if len(TAGS.findall(completion)) == 4 else 0.0
