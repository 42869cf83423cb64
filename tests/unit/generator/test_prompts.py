"""Prompt rendering with the tiny model's byte tokenizer: ids derived by hand from its vocabulary order."""

from __future__ import annotations

import pytest

from generator.prompts import PromptRenderer
from launcher.tiny_model import build_tokenizer
from rlfleet.errors import InvalidRequest
from rlfleet.generation import PromptInput

# The byte tokenizer's vocabulary is the 256 ByteLevel characters sorted by code point, then the
# specials. Printable ASCII maps to itself and '!' (33) is the smallest character, so a printable
# character c has id ord(c) - 33: 'h' = 104 - 33 = 71, 'i' = 72. Specials follow at 256:
# <|pad|> 256, <|bos|> 257, <|eos|> 258, <|user|> 259, <|assistant|> 260, <|system|> 261.


@pytest.fixture(scope="module")
def renderer() -> PromptRenderer:
    return PromptRenderer(build_tokenizer(), vocab_size=262, max_model_len=16)


def test_text_and_chat_are_tokenized(renderer):
    text = renderer.render(0, PromptInput("a", text="hi"))
    assert text.prompt_ids == [71, 72] and text.prompt_text == "hi"
    chat = renderer.render(1, PromptInput("b", messages=(("user", "hi"),)))
    # "<|user|>hi<|assistant|>": one BOS-free rendering, specials kept in prompt_text
    assert chat.prompt_ids == [259, 71, 72, 260]
    assert chat.prompt_text == "<|user|>hi<|assistant|>"


def test_token_ids_pass_through_and_are_range_checked(renderer):
    assert renderer.render(0, PromptInput("a", token_ids=(71, 261))).prompt_ids == [71, 261]
    with pytest.raises(InvalidRequest, match=r"prompts\[2\]\.token_ids\[1\]: 262 >= vocabulary size 262"):
        renderer.render(2, PromptInput("a", token_ids=(71, 262)))


def test_exactly_one_prompt_form_and_room_to_generate(renderer):
    with pytest.raises(InvalidRequest, match=r"prompts\[0\]: set exactly one"):
        renderer.render(0, PromptInput("a", token_ids=(1,), text="x"))
    with pytest.raises(InvalidRequest, match=r"prompts\[0\]: set exactly one"):
        renderer.render(0, PromptInput("a"))
    # 16 one-byte tokens leave no room for a completion below max_model_len = 16
    with pytest.raises(InvalidRequest, match="16 prompt tokens"):
        renderer.render(0, PromptInput("a", text="x" * 16))
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
        renderer.render(0, PromptInput("a", messages=(("", "hi"),)))


def test_tokenizer_hash_is_stable_and_sensitive(renderer):
    other = build_tokenizer()
    assert PromptRenderer(other, 262, 16).tokenizer_hash == renderer.tokenizer_hash
    other.add_tokens(["<|extra|>"])
    assert PromptRenderer(other, 263, 16).tokenizer_hash != renderer.tokenizer_hash
