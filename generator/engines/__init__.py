"""Generation backends behind one interface; `make_engine` picks one from the config."""

from __future__ import annotations

import asyncio

from generator.config import GeneratorConfig
from generator.engines.base import Engine, EngineRequest, EngineStats

__all__ = ["Engine", "EngineRequest", "EngineStats", "make_engine"]


async def make_engine(config: GeneratorConfig) -> Engine:
    """The engine named by `config.engine`, started; heavy imports happen here, not at module import.

    Start-up blocks for seconds to minutes (imports, weights, warm-up), so it runs in a thread: the
    event loop keeps answering health checks (NOT_SERVING) meanwhile.
    """
    if config.engine == "vllm":
        from generator.engines.vllm_engine import VllmEngine

        return await asyncio.to_thread(VllmEngine.start, config)
    from generator.engines.transformers_fake import TransformersFakeEngine

    return await asyncio.to_thread(TransformersFakeEngine.start, config)
