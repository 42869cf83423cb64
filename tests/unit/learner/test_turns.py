"""Chat-template rendering of multi-turn rollouts: new messages alone, as the template renders them in context."""

from __future__ import annotations

import pytest

from launcher.tiny_model import build_tokenizer
from learner.pipeline.turns import TurnRenderer

# A Qwen-like template: every turn ends with EOS and a newline, which the model never generates.
NEWLINE_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|eos|>\\n' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_tiny_template_observation_is_the_tool_turn_and_the_generation_prompt():
    tokenizer = build_tokenizer()
    renderer = TurnRenderer(tokenizer)
    prompt = renderer.prompt([{"role": "user", "content": "3*4"}])
    turn = _ids(tokenizer, "calc(3*4)") + [tokenizer.eos_token_id]
    after = renderer.after_turn(turn, [{"role": "tool", "content": "12"}])
    assert renderer.decode(prompt) == "<|user|>3*4<|assistant|>"
    assert renderer.decode(after) == "<|tool|>12<|assistant|>"
    # the conversation as ids equals the template's rendering of the whole conversation
    whole = tokenizer.apply_chat_template([{"role": "user", "content": "3*4"}, {"role": "assistant", "content": "calc(3*4)"},
                                           {"role": "tool", "content": "12"}], add_generation_prompt=True, tokenize=False)
    assert prompt + turn + after == _ids(tokenizer, whole)


def test_separator_after_eos_comes_first_and_a_missing_eos_is_added():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = NEWLINE_TEMPLATE
    renderer = TurnRenderer(tokenizer)
    assert renderer.decode(renderer.after_eos) == "\n"
    eos = tokenizer.eos_token_id
    ended = renderer.after_turn(_ids(tokenizer, "hi") + [eos], [{"role": "user", "content": "go on"}])
    assert renderer.decode(ended) == "\n<|user|>go on<|eos|>\n<|assistant|>"
    stopped = renderer.after_turn(_ids(tokenizer, "hi"), [{"role": "user", "content": "go on"}])  # a stop string ended it
    assert stopped == [eos] + ended


def test_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = build_tokenizer()
    # drops every assistant turn but the last, as some reasoning templates drop earlier thinking
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                               "{{ '<|' + m['role'] + '|>' + m['content'] + '<|eos|>' }}{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    renderer = TurnRenderer(tokenizer)
    with pytest.raises(ValueError, match="renders earlier turns differently"):
        renderer.after_turn([tokenizer.eos_token_id], [{"role": "tool", "content": "12"}])


def test_tokenizer_without_template_is_refused():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        TurnRenderer(tokenizer)
