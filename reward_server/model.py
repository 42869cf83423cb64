"""Model-based reward: a sequence-classification model (or a likelihood-scored causal LM) scoring (prompt, completion), batched by token budget.

What the model reads is `rlfleet.reward_input.reward_model_ids`, shared with `rlfleet train-rm` so
that training and serving see the same tokens: the conversation in the tokenizer's chat template
when it has one, else the plain text prompt + completion.

Scores do not depend on batch composition: sequences are right-padded, so every real token keeps
its position id and attends only to real tokens (left padding would shift Llama's default
position ids), and the score is read at each sequence's own last real token — the same token
transformers' `*ForSequenceClassification` picks (the last token that is not `pad_token_id`).

A folder whose config.json says `"rlfleet_reward_score": "mean_logprob"` is a causal LM scored by the
mean log-probability of the completion's tokens (`rlfleet.reward_score`; `rlfleet train-rm --score
mean_logprob` writes one).
"""

from __future__ import annotations

import threading
from pathlib import Path

from rlfleet.adapters.identity import base_model_id
from rlfleet.reward_input import reward_model_ids, reward_model_split
from rlfleet.reward_score import MEAN_LOGPROB, SCORE_KEY, mean_completion_logprob

LOGITS_BUDGET = 2**28  # floats of logits per forward of a likelihood model (1 GiB in float32)


class RewardModel:
    """A transformers AutoModelForSequenceClassification with one output label, or a causal LM whose config says
    it is scored by mean log-probability; in eval mode on the CPU or GPU."""

    def __init__(self, path: str | Path, max_batch_tokens: int = 8192):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        kind = getattr(AutoConfig.from_pretrained(self.path), SCORE_KEY, None)
        if kind not in (None, MEAN_LOGPROB):
            raise ValueError(f"{self.path}: config.json {SCORE_KEY} is {kind!r}; expected {MEAN_LOGPROB!r} or none")
        self.likelihood = kind == MEAN_LOGPROB
        if self.likelihood:
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
            # its forward holds [tokens x vocab] logits (and their log-softmax): keep a batch's under ~1 GiB each
            vocab = self.model.config.vocab_size
            self.max_batch_tokens = max(1, min(max_batch_tokens, LOGITS_BUDGET // vocab))
        else:
            self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
            if self.model.config.num_labels != 1:
                raise ValueError(f"{self.path}: a reward model needs num_labels=1, got {self.model.config.num_labels}")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = self.tokenizer.pad_token_id
        self.model.config.pad_token_id = self.pad_id
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.model_id = base_model_id(self.path)
        self.description = (f"mean-log-probability reward model {Path(self.path).name}" if self.likelihood
                            else f"sequence-classification reward model {Path(self.path).name}")
        self._lock = threading.Lock()  # one forward at a time: concurrent calls would only fight for cores

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped so that (longest length in the group) x (group size) <= max_batch_tokens.

        Sorting by length first keeps padding small; a sequence longer than the budget goes alone.
        """
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: list[list[int]] = []
        for i in order:
            if groups and lengths[i] * (len(groups[-1]) + 1) <= self.max_batch_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def score(self, texts: list[str]) -> list[float]:
        """One score per plain text, in order (no chat template; a likelihood model scores every token after the first)."""
        return self.score_ids([self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts])

    def score_items(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One score per (prompt, completion), read as `reward_model_ids` formats it."""
        pairs = zip(prompts, completions, strict=True)
        if not self.likelihood:
            return self.score_ids([reward_model_ids(self.tokenizer, p, c) for p, c in pairs])
        split = [reward_model_split(self.tokenizer, p, c) for p, c in pairs]
        return self.score_ids([ids for ids, _ in split], [start for _, start in split])

    def score_ids(self, ids: list[list[int]], starts: list[int] | None = None) -> list[float]:
        """One score per token sequence, in order; `starts`: where each completion begins (likelihood models)."""
        import torch

        starts = starts if starts is not None else [1] * len(ids)
        scores: list[float] = [0.0] * len(ids)
        with self._lock, torch.inference_mode():
            for group in self.batches([len(x) for x in ids]):
                width = max(len(ids[i]) for i in group)
                input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)  # [B, T]
                mask = torch.zeros((len(group), width), dtype=torch.long)  # [B, T]
                for row, i in enumerate(group):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                if self.likelihood:  # logits: [B, T, V]
                    values = mean_completion_logprob(logits, input_ids.to(self.device),
                                                     torch.tensor([starts[i] for i in group], device=self.device),
                                                     mask.sum(-1).to(self.device))  # [B]
                else:
                    values = logits[:, 0]  # logits: [B, 1]
                for row, i in enumerate(group):
                    scores[i] = float(values[row])
        return scores
