"""`rlfleet learner --config run.toml`: trains a LoRA adapter with DeepSpeed and pushes it to generators."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from learner.config import LearnerConfig
from rlfleet.config import ConfigError, check_model_path, load_config


def check_inputs(config: LearnerConfig) -> None:
    """The model folder and the pipeline's dataset, before DeepSpeed is imported; ConfigError names the option."""
    check_model_path(config.model, "--model")
    if config.source.type == "pipeline":
        from learner.pipeline.dataset import check_dataset

        try:
            check_dataset(config.source.dataset, config.source.prompt_column)
        except ValueError as err:
            raise ConfigError(f"source.dataset: {err}") from None


def main(argv: list[str] | None = None) -> int:
    config = load_config(LearnerConfig, argv, prog="rlfleet learner")
    check_inputs(config)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # DeepSpeed compiles a CPU op on first use; keep the build beside the environment, not in ~/.cache.
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(venv, "torch_extensions"))
    from learner.server import serve  # imports torch and DeepSpeed, after --help has returned

    return asyncio.run(serve(config))


if __name__ == "__main__":
    from rlfleet.cli import run_command

    raise SystemExit(run_command("learner", sys.argv[1:]))
