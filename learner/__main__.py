"""`rlfleet learner --config run.toml`: trains a LoRA adapter with DeepSpeed and pushes it to generators."""

from __future__ import annotations

import asyncio
import logging
import os

from learner.config import LearnerConfig
from rlfleet.config import load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(LearnerConfig, argv, prog="rlfleet learner")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # DeepSpeed compiles a CPU op on first use; keep the build beside the environment, not in ~/.cache.
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(venv, "torch_extensions"))
    from learner.server import serve  # imports torch and DeepSpeed, after --help has returned

    return asyncio.run(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
