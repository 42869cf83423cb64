"""Exact and normalised string match of the final answer against the gold answer."""

from __future__ import annotations

import re
import string

from reward_server.builtins.answer import final_answer, hedged


def exact_match(prompt: str, completion: str, answer: str | None = None, **columns) -> float | None:
    """1.0 when the final answer equals the gold `answer` exactly (surrounding whitespace ignored), else 0.0.

    The final answer is the last <answer> block, else the last \\boxed{}, else the last line; never a
    substring, so an empty answer or "A or B or C" scores 0. None (not applicable) without a gold answer.

        >>> exact_match("2+2?", "<answer>4</answer>", answer="4")
        1.0
        >>> exact_match("2+2?", "<answer>3 or 4</answer>", answer="4")
        0.0
    """
    if answer is None:
        return None
    said = final_answer(completion)
    return 1.0 if said and not hedged(completion) and said == str(answer).strip() else 0.0


def normalize(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD's answer normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalized_match(prompt: str, completion: str, answer: str | None = None, **columns) -> float | None:
    """1.0 when the final answer equals the gold `answer` after normalisation (case, punctuation, articles).

        >>> normalized_match("Capital of France?", "<answer>The Paris.</answer>", answer="paris")
        1.0
        >>> normalized_match("Capital of France?", "<answer></answer>", answer="paris")
        0.0
    """
    if answer is None:
        return None
    said = normalize(final_answer(completion))
    return 1.0 if said and not hedged(completion) and said == normalize(str(answer)) else 0.0
