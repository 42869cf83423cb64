"""DAPO's soft overlong punishment: a penalty ramping from 0 to -1 over the last tokens before the length limit."""

from __future__ import annotations


def overlong_penalty(prompt: str, completion: str, completion_tokens: int = 0, finish_reason: str | None = None,
                     max_completion_tokens: int = 1024, overlong_buffer_tokens: int = 256, **columns) -> float | None:
    """DAPO (Yu et al. 2025, eq. 13): 0 up to L_max - L_cache tokens, then (L_max - L_cache - L) / L_cache, -1 past L_max.

    L = completion_tokens, L_max = max_completion_tokens, L_cache = overlong_buffer_tokens (columns
    may override both). A truncated completion (finish_reason "length") gets -1. None when the
    length is unknown (completion_tokens 0).

        >>> overlong_penalty("q", "...", completion_tokens=896, max_completion_tokens=1024, overlong_buffer_tokens=256)
        -0.5
        >>> overlong_penalty("q", "...", completion_tokens=100)
        0.0
    """
    if finish_reason == "length":
        return -1.0
    if completion_tokens <= 0:
        return None
    free = max_completion_tokens - overlong_buffer_tokens
    if completion_tokens <= free:
        return 0.0
    if completion_tokens <= max_completion_tokens:
        return (free - completion_tokens) / overlong_buffer_tokens
    return -1.0
