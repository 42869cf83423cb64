"""Prompt rendering: token ids, raw text or chat turns -> the token ids fed to the model, validated."""

from __future__ import annotations

import hashlib
import json

from generator.rollouts import TokenizedPrompt
from rlfleet.errors import InvalidRequest
from rlfleet.generation import PromptInput


class PromptRenderer:
    """Tokenizes and checks prompts with the served model's tokenizer."""

    def __init__(self, tokenizer, vocab_size: int, max_model_len: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len

    @property
    def tokenizer_hash(self) -> str:
        """A short hash of the vocabulary and special tokens: equal hashes mean equal token ids."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        special = sorted(map(str, self.tokenizer.all_special_tokens))
        return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:16]

    def render(self, index: int, prompt: PromptInput) -> TokenizedPrompt:
        """The prompt's token ids; InvalidRequest naming `prompts[index]...` when it is unusable."""
        field = f"prompts[{index}]"
        given = [name for name, value in (("token_ids", prompt.token_ids), ("text", prompt.text),
                                          ("messages", prompt.messages)) if value]
        if len(given) != 1:
            raise InvalidRequest(field, f"set exactly one of token_ids, text and messages (got {given or 'none'})")
        if prompt.token_ids:
            ids = list(prompt.token_ids)
            bad = next((i for i, t in enumerate(ids) if t >= self.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(f"{field}.token_ids[{bad}]", f"{ids[bad]} >= vocabulary size {self.vocab_size}")
        elif prompt.text:
            ids = list(self.tokenizer(prompt.text)["input_ids"])
        else:
            ids = self._render_chat(field, prompt.messages)
        if not ids:
            raise InvalidRequest(field, "tokenizes to no tokens")
        if len(ids) >= self.max_model_len:
            raise InvalidRequest(field, f"{len(ids)} prompt tokens leave no room below max_model_len={self.max_model_len}")
        return TokenizedPrompt(prompt.prompt_id, ids, self.tokenizer.decode(ids, skip_special_tokens=False))

    def _render_chat(self, field: str, messages: tuple[tuple[str, str], ...]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest(f"{field}.messages", "the served tokenizer has no chat template; send text or token_ids")
        for i, (role, _) in enumerate(messages):
            if not role:
                raise InvalidRequest(f"{field}.messages[{i}].role", "must be set (system, user or assistant)")
        text = self.tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False)
        # The template already wrote any BOS it wants; tokenizing with special tokens would add a second one.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
