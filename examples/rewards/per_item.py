"""Example reward script in the per-item form: one (prompt, completion) at a time.

    rlfleet reward-server --script examples/rewards/per_item.py
"""


def brevity(prompt, completion, completion_tokens=0, **columns):
    """Prefers short completions: 1 - tokens / 512, floored at 0; None when the length is unknown.

        >>> brevity("q", "abc", completion_tokens=128)
        0.75
    """
    if completion_tokens == 0:
        return None
    return max(0.0, 1.0 - completion_tokens / 512)


def mentions_units(prompt, completion, unit=None, **columns):
    """1.0 when the completion names the dataset row's `unit` column (e.g. "km"), else 0.0.

        >>> mentions_units("how far?", "about 3 km", unit="km")
        1.0
    """
    if unit is None:
        return None
    return 1.0 if unit in completion.split() else 0.0
