"""Generation backends behind one interface; `make_engine` picks one from the config."""

from __future__ import annotations

from generator.config import GeneratorConfig
from generator.engines.base import Engine, EngineRequest, EngineStats

__all__ = ["Engine", "EngineRequest", "EngineStats", "make_engine"]


async def make_engine(config: GeneratorConfig) -> Engine:
    """The engine named by `config.engine`, started; heavy imports happen here, not at module import."""
    if config.engine == "vllm":
        from generator.engines.vllm_engine import VllmEngine

        return VllmEngine.start(config)
    from generator.engines.transformers_fake import TransformersFakeEngine

    return TransformersFakeEngine.start(config)
