"""What a reward model reads for (prompt, completion): the chat template when the tokenizer has one, else plain text."""

from __future__ import annotations

from launcher.tiny_model import build_tokenizer
from rlfleet.reward_input import reward_model_ids, reward_model_split


def test_chat_template_wraps_a_plain_prompt_and_completes_a_rendered_one():
    tokenizer = build_tokenizer()
    want = "<|user|>reverse:abc<|assistant|>cba<|eos|>"
    assert tokenizer.decode(reward_model_ids(tokenizer, "reverse:abc", "cba")) == want
    # a chat dataset's prompt arrives rendered (what the policy saw): only the completion and the close are added
    assert tokenizer.decode(reward_model_ids(tokenizer, "<|user|>reverse:abc<|assistant|>", "cba")) == want


def test_without_a_template_the_text_is_prompt_plus_completion():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    ids = reward_model_ids(tokenizer, "reverse:abc", "cba")
    assert tokenizer.decode(ids) == "reverse:abccba" and len(ids) == 14  # one token per byte


def test_split_marks_where_the_completion_and_its_closing_tokens_begin():
    tokenizer = build_tokenizer()
    for prompt in ("reverse:abc", "<|user|>reverse:abc<|assistant|>"):
        ids, start = reward_model_split(tokenizer, prompt, "cba")
        assert ids == reward_model_ids(tokenizer, prompt, "cba")
        assert tokenizer.decode(ids[:start]) == "<|user|>reverse:abc<|assistant|>"
        assert tokenizer.decode(ids[start:]) == "cba<|eos|>"
    ids, start = reward_model_split(tokenizer, "reverse:abc", "")  # an empty completion still has its end of turn
    assert tokenizer.decode(ids[start:]) == "<|eos|>"
    tokenizer.chat_template = None
    ids, start = reward_model_split(tokenizer, "reverse:abc", "cba")
    assert tokenizer.decode(ids[start:]) == "cba"
