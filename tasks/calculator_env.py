"""Environment of the built-in `calculator` task, a TRL environment_factory class: `rlfleet env-server --script tasks/calculator_env.py`.

The model is asked for a product such as `37*58`. It may call `calc` with an arithmetic expression
and gets the exact value back as the tool's observation; its first message without a tool call is
its answer, scored 1.0 when it is exactly the product. Stand-alone (standard library only), as any
user's environment script is.

>>> env = Calculator()
>>> env.reset(prompt="37*58", answer="2146") is None
True
>>> env.calc("37*58")
'2146'
>>> env.on_message(" 2146 ") is None, env.get_reward()
(True, 1.0)
"""

from __future__ import annotations

import ast
import operator

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
MAX_DIGITS = 40
"""Largest result the calculator gives, in digits: a product of products grows without end."""


def evaluate(expression: str) -> int:
    """The value of an expression of integers, + - * and parentheses; ValueError for anything else.

    >>> evaluate("(2+3)*-4")
    -20
    """
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            result = _OPERATORS[type(node.op)](value(node.left), value(node.right))
            if len(str(abs(result))) > MAX_DIGITS:
                raise ValueError(f"result has more than {MAX_DIGITS} digits")
            return result
        raise ValueError(f"only integers, + - * and parentheses are allowed, not {ast.dump(node)[:40]}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression[:60]!r}") from None
    return value(tree.body)


class Calculator:
    """Arithmetic with a calculator tool: the answer must be the exact value."""

    def reset(self, answer: str | None = None, **row) -> str | None:
        if answer is None:
            raise ValueError("the row has no answer to grade against")
        self.answer = str(answer).strip()
        self.reply: str | None = None
        return None

    def calc(self, expression: str) -> str:
        """Evaluates an arithmetic expression exactly.

        Args:
            expression: integers with + - * and parentheses, e.g. 37*58

        Returns:
            The value, as digits.
        """
        return str(evaluate(expression))

    def on_message(self, message: str) -> str | None:
        """The model's answer (a message without a tool call) ends the episode."""
        self.reply = message.strip()
        return None

    def get_reward(self) -> float:
        return 1.0 if self.reply == self.answer else 0.0
