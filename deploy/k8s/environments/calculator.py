"""A calculator environment in TRL's environment_factory form: the model computes with tools, then submits.

Served by `rlfleet env-server --script calculator.py` (compose mounts ./environments at
/environments); the same class works unchanged as `GRPOTrainer(environment_factory=Calculator)`.
Each dataset row carries `answer`, the number the question asks for; the session's reward is 1.0
when the submitted value equals it.
"""

from __future__ import annotations

import math


class Calculator:
    """Arithmetic with a calculator: compute with add, subtract, multiply, divide, then submit the result."""

    def __init__(self):
        self.answer: float | None = None
        self.submitted: float | None = None
        self.done = False

    def reset(self, answer: float | None = None, **row) -> str | None:
        """Starts a question; the prompt already asks it, so nothing is appended to it."""
        self.answer, self.submitted, self.done = answer, None, False
        return None

    def add(self, a: float, b: float) -> float:
        """Adds two numbers.

        Args:
            a: The first number.
            b: The second number.
        """
        return a + b

    def subtract(self, a: float, b: float) -> float:
        """Subtracts b from a.

        Args:
            a: The number to subtract from.
            b: The number to subtract.
        """
        return a - b

    def multiply(self, a: float, b: float) -> float:
        """Multiplies two numbers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        return a * b

    def divide(self, a: float, b: float) -> float:
        """Divides a by b (dividing by zero is an error the model sees).

        Args:
            a: The dividend.
            b: The divisor.
        """
        return a / b

    def submit(self, value: float) -> str:
        """Submits the final answer; the session ends.

        Args:
            value: The answer to the question.
        """
        self.submitted, self.done = value, True
        return "submitted"

    def get_reward(self) -> float:
        """1.0 when the submitted value is the answer (to 1e-6 relative), else 0.0."""
        if self.submitted is None or self.answer is None:
            return 0.0
        return 1.0 if math.isclose(self.submitted, float(self.answer), rel_tol=1e-6, abs_tol=1e-9) else 0.0
