"""Built-in rewards, usable by name (`--reward math_answer:1.0`) and as examples of reward functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reward_server.builtins.code_tests import code_tests
from reward_server.builtins.exact_match import exact_match, normalized_match
from reward_server.builtins.format_check import think_answer_format
from reward_server.builtins.length import overlong_penalty
from reward_server.builtins.math_answer import math_answer
from reward_server.builtins.reasoning_gym_score import reasoning_gym

BUILTINS: dict[str, Callable[..., Any]] = {
    "exact_match": exact_match,
    "normalized_match": normalized_match,
    "think_answer_format": think_answer_format,
    "math_answer": math_answer,
    "code_tests": code_tests,
    "overlong_penalty": overlong_penalty,
    "reasoning_gym": reasoning_gym,
}
