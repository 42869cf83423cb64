"""Built-in synthetic tasks with checkable answers, for the default demo and tests (`builtin:NAME` datasets).

Nothing can be downloaded here, so the demo trains on a task generated on the spot. `reverse`:
the prompt is `reverse:abc`, the answer `cba`. A tiny model learns it as a rule (not a lookup), so
a held-out split of unseen strings measures learning rather than memorisation. The reward
functions that grade it live in `tasks/rewards.py`, an ordinary reward script; `reverse_long` is the
same with answers of 2 to 100 letters. `calculator`: the
prompt is `37*58`, the answer `2146`, played over several turns with a calculator tool; its
environment (tool and grading) is `tasks/calculator_env.py`, an ordinary environment script. The
learner's dataset code (`learner/pipeline/dataset.py`) turns these (prompt, answer) pairs into its rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

# The reward script that grades every built-in task (an ordinary TRL-style script).
REWARD_SCRIPT = Path(__file__).with_name("rewards.py")


@dataclass(frozen=True)
class ReverseTask:
    """Reverse a short string of letters; lengths and alphabet set the difficulty."""

    alphabet: str = "abcdefgh"
    min_len: int = 3
    max_len: int = 6

    def make(self, rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))
        return f"reverse:{word}", word[::-1]


@dataclass(frozen=True)
class CalculatorTask:
    """Multiply two numbers of `digits` digits: past the tiny model's head, one call of the calculator tool away.

    The prompt is `37*58`, the answer `2146`. The environment that serves the tool and grades the
    answer is `tasks/calculator_env.py`; the tool-call format is taught by the warm-start phase.
    """

    digits: int = 2

    def make(self, rng: random.Random) -> tuple[str, str]:
        low, high = 10 ** (self.digits - 1), 10 ** self.digits - 1
        a, b = rng.randint(low, high), rng.randint(low, high)
        return f"{a}*{b}", str(a * b)


TASKS = {"reverse": ReverseTask(), "calculator": CalculatorTask(),
         # Answers of 2 to 100 letters: a model that has learnt to stop makes completions of very different
         # lengths, which is what separates engines that stop a finished sequence from ones that pad it
         # until the longest is done (bench/vs_trl.py's compute-bound configuration).
         "reverse_long": ReverseTask(alphabet="abcdefghijklmnopqrstuvwxyz", min_len=2, max_len=100)}
# The environment script of the built-in tasks that are played with tools (`rlfleet up --env builtin:NAME`).
ENVIRONMENT_SCRIPTS = {"calculator": Path(__file__).with_name("calculator_env.py")}


def builtin_items(name: str, train_size: int = 2000, eval_size: int = 200, seed: int = 1234
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, eval) lists of (prompt, answer) pairs of a built-in task; the splits share no prompt."""
    if name not in TASKS:
        raise ValueError(f"unknown built-in task {name!r}; choose from {sorted(TASKS)}")
    task, rng = TASKS[name], random.Random(seed)
    seen: dict[str, str] = {}
    while len(seen) < train_size + eval_size:
        prompt, answer = task.make(rng)
        seen.setdefault(prompt, answer)
    items = list(seen.items())
    return items[:train_size], items[train_size:]
