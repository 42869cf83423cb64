"""Where a completion states its final answer: the last <answer> block, the last \\boxed{}, or the last line."""

from __future__ import annotations

import re

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
OR_LIST = re.compile(r"\bor\b|\|\|", re.IGNORECASE)


def boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, braces balanced (a regex cannot match nested braces)."""
    found = []
    start = text.find("\\boxed{")
    while start != -1:
        depth, i = 1, start + len("\\boxed{")
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append(text[start + len("\\boxed{"):i - 1])
        start = text.find("\\boxed{", i)
    return found


def final_answer(completion: str) -> str:
    """The answer a completion commits to; "" when it gives none."""
    tagged = ANSWER_TAG.findall(completion)
    if tagged:
        return tagged[-1].strip()
    boxed = boxed_contents(completion)
    if boxed:
        return boxed[-1].strip()
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def hedged(completion: str) -> bool:
    """True for answers that try several candidates: "A or B or C", or several different \\boxed{}."""
    return bool(OR_LIST.search(final_answer(completion))) or len(set(boxed_contents(completion))) > 1
