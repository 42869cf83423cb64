"""In-learner rollout pipeline: keeps generators busy, scores groups, fetches reference log-probs, emits batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learner.config import LearnerConfig
    from learner.pipeline.source import PipelineSource


def make_pipeline_source(config: LearnerConfig, trainer=None) -> PipelineSource:
    """The pipeline for a learner config: reference log-probs come from the service only when the KL needs them."""
    from learner.pipeline.source import PipelineSource

    needs_reference = config.algo.needs_reference and config.reference == "service"
    if needs_reference and not config.source.reference:
        raise ValueError("learner.reference = 'service' with a KL coefficient > 0 needs learner.source.reference (an address)")
    return PipelineSource(config.source, config.run_dir, needs_reference=needs_reference,
                          dynamic_sampling=config.algo.dapo.dynamic_sampling)
