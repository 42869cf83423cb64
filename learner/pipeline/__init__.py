"""In-learner rollout pipeline: keeps generators busy, scores groups, fetches reference log-probs, emits batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learner.config import LearnerConfig
    from learner.pipeline.source import PipelineSource


def make_pipeline_source(config: LearnerConfig, trainer=None) -> PipelineSource:
    """The pipeline for a learner config (LearnerConfig checked that it has generators and, if needed, a reference)."""
    from learner.pipeline.source import PipelineSource

    source = PipelineSource(config.source, config.generators, config.client, config.run_dir,
                            needs_reference=config.needs_reference_service,
                            dynamic_sampling=config.algo.dapo.dynamic_sampling, max_steps=config.max_steps,
                            push_every_steps=config.push.push_every_steps)
    if config.source.environment is not None:
        from learner.pipeline.multiturn import MultiTurnRollout
        from learner.pipeline.turns import TurnRenderer

        # The learner's tokenizer renders the turns it will train on (the generator's must be the same).
        source.driver = MultiTurnRollout(source.pool, config.source, source.stats, TurnRenderer.from_pretrained(
            config.model), config.client)
    return source
