"""Example reward script in TRL's form: accuracy on GSM8K-style answers plus a format bonus.

    rlfleet reward-server --script examples/rewards/gsm8k.py --reward accuracy:1.0 --reward format:0.2
    rlfleet reward-server --check examples/rewards/gsm8k.py --sample examples/rewards/sample.jsonl

The same file works unchanged as `reward_funcs=[accuracy, format]` in TRL's GRPOTrainer.
"""

import re

ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
FORMAT = re.compile(r"\s*<think>.+?</think>\s*<answer>.+?</answer>\s*", re.DOTALL)


def _numbers(text):
    """Every number in `text`, without thousands separators."""
    return [n.replace(",", "").rstrip(".") for n in re.findall(r"-?\d[\d,]*\.?\d*", text)]


def accuracy(prompts, completions, answer, **kwargs):
    """1.0 when <answer> holds exactly one number and it equals the gold answer's last number, else 0.0.

    "96 or 72" scores 0 (hedging), and so does an empty answer. None without a gold answer.

        >>> accuracy(["q"], ["<think>6*7</think><answer>42</answer>"], answer=["#### 42"])
        [1.0]
    """
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None:
            rewards.append(None)  # not applicable: left out of the total, not a 0
            continue
        said = _numbers(ANSWER.findall(completion)[-1]) if ANSWER.search(completion) else []
        rewards.append(1.0 if len(said) == 1 and said == _numbers(str(gold))[-1:] else 0.0)
    return rewards


def format(prompts, completions, **kwargs):  # noqa: A001 - TRL examples use this name
    """1.0 for exactly `<think>...</think><answer>...</answer>`, else 0.0.

        >>> format(["q"], ["<think></think>42"])
        [0.0]
    """
    return [1.0 if FORMAT.fullmatch(c) else 0.0 for c in completions]
