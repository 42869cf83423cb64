"""Built-in synthetic tasks with checkable answers, for the default demo and tests (`builtin:NAME` datasets).

Nothing can be downloaded here, so the demo trains on a task generated on the spot. `reverse`:
the prompt is `reverse:abc`, the answer `cba`. A tiny model learns it as a rule (not a lookup), so
a held-out split of unseen strings measures learning rather than memorisation. The reward
functions that grade it live in `tasks/rewards.py`, an ordinary reward script. The learner's dataset
code (`learner/pipeline/dataset.py`) turns these (prompt, answer) pairs into its rows.
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


TASKS = {"reverse": ReverseTask()}


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
