"""What a reward model reads for one (prompt, completion): shared by the reward server and `rlfleet train-rm`.

With a chat template in the tokenizer: the conversation user = prompt, assistant = completion,
rendered by it, as chat reward models are trained (TRL's RewardTrainer on conversational data,
`rlfleet train-rm`). A prompt that already is a rendered conversation (chat datasets: the pipeline
sends the text the policy saw) gets only the completion and the template's closing part. Without a
template: the plain text prompt + completion with the tokenizer's special tokens. Remove
`chat_template` from a model's tokenizer_config.json to score plain text with it.

With the tiny model's tokenizer, ("reverse:abc", "cba") and ("<|user|>reverse:abc<|assistant|>", "cba")
both read "<|user|>reverse:abc<|assistant|>cba<|eos|>".
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=8)  # keyed by the tokenizer object: rendering the template once, not per item
def _template_parts(tokenizer) -> tuple[str, str, str]:
    """(before the user's text, between it and the assistant's, after the assistant's) in the chat template."""
    user, assistant = "\x00USER\x00", "\x00ASSISTANT\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                                         tokenize=False)
    head, rest = text.split(user, 1)
    between, tail = rest.split(assistant, 1)
    return head, between, tail


def _around_completion(tokenizer, prompt: str) -> tuple[str, str] | None:
    """(the text before the completion, the text after it) in the chat template; None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    head, between, tail = _template_parts(tokenizer)
    rendered = prompt.startswith(head) and prompt.endswith(between)
    return (prompt if rendered else head + prompt + between), tail


def reward_model_ids(tokenizer, prompt: str, completion: str) -> list[int]:
    """The token ids a reward model scores for one (prompt, completion); see the module docstring."""
    around = _around_completion(tokenizer, prompt)
    if around is None:
        return tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
    before, after = around
    return tokenizer(before + completion + after, add_special_tokens=False)["input_ids"]


def reward_model_split(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(`reward_model_ids`, where the completion's part starts): the tokens a likelihood-scored reward model
    scores are ids[start:] (the completion and the template's closing part, e.g. the end-of-turn token).

    The start is how far the ids of the prompt part alone (the text up to the completion) agree with
    the whole, so a tokenizer that merges across the boundary gives the merged token to the completion.
    """
    whole = reward_model_ids(tokenizer, prompt, completion)
    around = _around_completion(tokenizer, prompt)
    ids = (tokenizer(prompt, add_special_tokens=True) if around is None
           else tokenizer(around[0], add_special_tokens=False))["input_ids"]
    start = 0
    while start < min(len(ids), len(whole)) and ids[start] == whole[start]:
        start += 1
    return whole, min(start, len(whole) - 1)
