"""Chat-template rendering for multi-turn rollouts: the first prompt, then each new message alone, as token ids.

Earlier turns are never re-tokenised: re-applying a chat template to a whole conversation can change
the tokens of turns the model already generated (whitespace, think-block stripping, merges across
a boundary), and then the learner's log-probs no longer match the generator's (verl saw PPO fail
to converge until its agent loop went token-in/token-out). So the conversation is a growing list
of ids: the model's turns exactly as generated, and after each the ids of the new messages only.

A new message's ids are taken from the template itself: the ids of a fixed two-turn conversation
are a prefix of the ids of that conversation plus the new messages, and the rest is the new part
(verl's agent loop does the same with a system-prompt prefix). The template's own text between
the assistant's EOS and the next message (Qwen's newline) comes first, since the model stops at EOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_BASE = ({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"})


class TurnRenderer:
    """Renders prompts and observations with one tokenizer's chat template, as ids."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("multi-turn rollouts need a tokenizer with a chat template")
        if tokenizer.eos_token_id is None:
            raise ValueError("multi-turn rollouts need a tokenizer with an EOS token (it ends the model's turns)")
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self._base_ids = self._render(list(_BASE), add_generation_prompt=False)
        if self.eos_id not in self._base_ids:
            raise ValueError("the chat template does not end an assistant turn with the EOS token, so a generated "
                             "turn cannot be joined to the next message token by token")
        last_eos = len(self._base_ids) - 1 - self._base_ids[::-1].index(self.eos_id)
        self.after_eos: list[int] = self._base_ids[last_eos + 1:]
        """Ids the template writes between an assistant turn's EOS and the next message (often none)."""

    @classmethod
    def from_pretrained(cls, path: str) -> TurnRenderer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    def _render(self, messages: list[Mapping[str, Any]], add_generation_prompt: bool,
                tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tools=list(tools) if tools else None,
                                                  add_generation_prompt=add_generation_prompt, tokenize=False)
        # The template writes any BOS it wants; tokenizing with special tokens would add a second one
        # (generator/prompts.py renders chat prompts the same way).
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = ()) -> list[int]:
        """The first prompt: the row's messages, the tools' schemas where the template shows them, the generation prompt."""
        return self._render(list(messages), add_generation_prompt=True, tools=tools)

    def after_turn(self, turn_ids: Sequence[int], messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Ids to append after a generated turn: its missing EOS (a stop string ended it), the template's
        separator, `messages` (tool results, a user reply) and the generation prompt."""
        full = self._render([*_BASE, *messages], add_generation_prompt=True)
        if full[:len(self._base_ids)] != self._base_ids:
            raise ValueError("the chat template renders earlier turns differently when messages follow them, so "
                             f"new messages cannot be rendered alone (roles {[m['role'] for m in messages]})")
        closing = [] if turn_ids and turn_ids[-1] == self.eos_id else [self.eos_id]
        return closing + self.after_eos + full[len(self._base_ids):]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
