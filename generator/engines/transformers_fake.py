"""A FAKE engine for unit tests only: plain transformers + PEFT, no KV cache, no batching. Never serve with it.

It implements the same Engine interface as vLLM (groups of n, raw log-probs, seeds, stop strings,
adapters by id, abort) so the core's own logic can be tested in seconds without starting vLLM.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from generator.config import GeneratorConfig
from generator.engines.base import Engine, EngineRequest, EngineStats
from generator.rollouts import Completion, EngineOutput
from rlfleet.generation import Sampling
from rlfleet.outcomes import FinishReason


class TransformersFakeEngine(Engine):
    """Decodes token by token with a full forward pass per token; adapters are PEFT adapters by name."""

    name = "transformers-fake"

    def __init__(self, model, tokenizer, max_model_len: int):
        self._base = model
        self._model = model                     # becomes a PeftModel on the first adapter
        self._tokenizer = tokenizer
        self._lock = asyncio.Lock()             # one forward or adapter change at a time
        self._aborted: set[str] = set()
        self._running: set[str] = set()
        self.max_model_len = max_model_len
        self.vocab_size = model.config.vocab_size

    @classmethod
    def start(cls, config: GeneratorConfig) -> TransformersFakeEngine:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
        return cls(model, tokenizer, config.max_model_len or model.config.max_position_embeddings)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self._running.add(request.request_id)
        try:
            return EngineOutput([await self._sample(request, i) for i in range(request.sampling.n)])
        finally:
            self._running.discard(request.request_id)
            self._aborted.discard(request.request_id)

    async def _sample(self, request: EngineRequest, index: int) -> Completion:
        import torch

        s = request.sampling
        rng = torch.Generator().manual_seed(s.seed * 1009 + index) if s.seed is not None else None
        token_ids: list[int] = []
        logprobs: list[float] = []
        finish = FinishReason.LENGTH
        for step in range(s.max_tokens):
            if request.request_id in self._aborted:
                finish = FinishReason.ABORT
                break
            logits = await self._next_logits(request.prompt_ids + token_ids, request.adapter_id)  # [V]
            token = _pick(logits, s, rng)
            token_ids.append(token)
            logprobs.append(float(logits.double().log_softmax(-1)[token]))   # raw: before temperature
            text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
            if step + 1 >= s.min_tokens and (token == self._tokenizer.eos_token_id or token in s.stop_token_ids
                                             or any(stop in text for stop in s.stop)):
                finish = FinishReason.STOP
                break
        text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
        for stop in s.stop:
            text = text.split(stop, 1)[0]
        return Completion(token_ids, logprobs if s.logprobs else [], finish, text)

    async def _next_logits(self, ids: list[int], adapter_id: int):
        import torch

        async with self._lock:
            def forward():
                with torch.no_grad():
                    if adapter_id == 0 and self._model is not self._base:
                        with self._model.disable_adapter():
                            return self._model(torch.tensor([ids])).logits[0, -1]
                    if adapter_id:
                        self._model.set_adapter(f"a{adapter_id}")
                    return self._model(torch.tensor([ids])).logits[0, -1]
            await asyncio.sleep(0)   # let aborts and other requests in between tokens
            return await asyncio.to_thread(forward)

    async def abort(self, request_ids: list[str]) -> None:
        self._aborted.update(r for r in request_ids if r in self._running)

    async def load_adapter(self, adapter_id: int, path: Path) -> None:
        from peft import PeftModel

        async with self._lock:
            if self._model is self._base:
                self._model = await asyncio.to_thread(PeftModel.from_pretrained, self._base, str(path),
                                                      adapter_name=f"a{adapter_id}")
            else:
                await asyncio.to_thread(self._model.load_adapter, str(path), adapter_name=f"a{adapter_id}")

    async def unload_adapter(self, adapter_id: int) -> None:
        async with self._lock:
            self._model.delete_adapter(f"a{adapter_id}")

    async def reset_prefix_cache(self) -> bool:
        return True   # no cache

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=0)

    def shutdown(self) -> None:
        pass


def _pick(logits, s: Sampling, rng) -> int:
    """Greedy at temperature 0, else temperature / top-k / top-p / min-p sampling."""
    import torch

    if s.temperature == 0:
        return int(logits.argmax())
    probs = (logits / s.temperature).softmax(-1)                       # [V]
    if s.top_k:
        probs[probs < probs.topk(min(s.top_k, probs.numel())).values[-1]] = 0
    if s.min_p:
        probs[probs < s.min_p * probs.max()] = 0
    if s.top_p < 1:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(0) - ordered > s.top_p * ordered.sum()   # mass before this token already >= top_p
        probs[order[outside]] = 0
    return int(torch.multinomial(probs / probs.sum(), 1, generator=rng))
