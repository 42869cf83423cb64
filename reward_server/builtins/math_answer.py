"""Math answer equivalence with Math-Verify (gold first), hardened against hedged answers."""

from __future__ import annotations

from reward_server.builtins.answer import final_answer, hedged

# Math-Verify's own per-call timeouts use signal.alarm: they work only on a process's main thread,
# which is where reward workers call functions (never on a gRPC thread).
TIMEOUT_SECONDS = 5


def math_answer(prompt: str, completion: str, answer: str | None = None, finish_reason: str | None = None,
                **columns) -> float | None:
    r"""1.0 when the completion's final answer is mathematically equal to the gold `answer`, else 0.0.

    Uses `math_verify.verify(gold, prediction)` in that order (the asymmetry is deliberate in
    Math-Verify). Scores 0 for: no answer, a truncated completion (finish_reason "length"), several
    different \boxed{} answers, or "A or B or C". A Math-Verify timeout is a 0 (a false negative).
    None without a gold answer.

        >>> math_answer("1/2 as a decimal?", r"So it is $\boxed{0.5}$", answer=r"$\frac{1}{2}$")
        1.0
        >>> math_answer("2+2?", r"\boxed{3} or maybe \boxed{4}", answer="4")
        0.0
    """
    from math_verify import parse, verify

    if answer is None:
        return None
    if finish_reason == "length" or not final_answer(completion) or hedged(completion):
        return 0.0
    gold = parse(str(answer), parsing_timeout=TIMEOUT_SECONDS)
    if not gold:
        gold = parse(f"${answer}$", parsing_timeout=TIMEOUT_SECONDS)
    prediction = parse(completion, parsing_timeout=TIMEOUT_SECONDS)
    return 1.0 if gold and prediction and verify(gold, prediction, timeout_seconds=TIMEOUT_SECONDS) else 0.0
