"""Built-in preference pairs for the demo task, ranked by its rule-based reward (`builtin:reverse` for `rlfleet train-rm`).

No preference data can be downloaded here, so the reward model of the PPO demo is trained on pairs
made on the spot: for each prompt, the right answer and corruptions of it of the kinds a policy
produces while it learns (a swapped pair, a wrong letter, a letter dropped or added, the word not
reversed, a random string), each scored by `tasks/rewards.py` with the demo's weights
(accuracy 1, similarity 0.5). A pair is (higher, lower) for every two candidates whose scores
differ by at least `margin` (0.25): the exact answer over every miss, a near miss over a far one.
Closer calls (one wrong letter against a swapped pair: 0.4 against 0.3 for five letters) are left
out as near-ties of the rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks import TASKS, builtin_items
from tasks.rewards import accuracy, similarity

# The demo's reward: `rlfleet up` serves tasks/rewards.py with --reward accuracy:1 --reward similarity:0.5.
DEMO_WEIGHTS = {"accuracy": 1.0, "similarity": 0.5}


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: `chosen` is the better completion of `prompt`; both are plain text."""

    prompt: str
    chosen: str
    rejected: str


def demo_reward(prompt: str, completion: str, answer: str) -> float:
    """accuracy + 0.5 x similarity, as the demo's reward service computes it."""
    columns = {"prompts": [prompt], "completions": [completion], "answer": [answer]}
    return DEMO_WEIGHTS["accuracy"] * accuracy(**columns)[0] + DEMO_WEIGHTS["similarity"] * similarity(**columns)[0]


def _corruptions(answer: str, alphabet: str, rng: random.Random) -> list[str]:
    """Near misses and far misses of `answer` (duplicates and the answer itself removed later)."""
    i = rng.randrange(len(answer))
    j = rng.randrange(len(answer) - 1)
    swapped = answer[:j] + answer[j + 1] + answer[j] + answer[j + 2:]
    wrong_letter = answer[:i] + rng.choice([c for c in alphabet if c != answer[i]]) + answer[i + 1:]
    return [swapped, wrong_letter, answer[:-1], answer + rng.choice(alphabet), answer[::-1],
            "".join(rng.choice(alphabet) for _ in range(len(answer)))]


def builtin_pairs(name: str = "reverse", prompts: int = 2000, seed: int = 1234, margin: float = 0.25
                  ) -> list[PreferencePair]:
    """Preference pairs over `prompts` prompts of built-in task `name` (the task's train split, same seed as its dataset)."""
    if name not in TASKS:
        raise ValueError(f"pairs 'builtin:{name}': unknown built-in task; choose from {sorted(TASKS)}")
    rng = random.Random(seed)
    train, _ = builtin_items(name, train_size=prompts, eval_size=0, seed=seed)
    pairs = []
    for prompt, answer in train:
        candidates = list(dict.fromkeys([answer, *_corruptions(answer, TASKS[name].alphabet, rng)]))
        scored = sorted(((demo_reward(prompt, c, answer), c) for c in candidates), reverse=True)
        pairs += [PreferencePair(prompt, better, worse) for k, (high, better) in enumerate(scored)
                  for low, worse in scored[k + 1:] if high - low >= margin]
    return pairs
