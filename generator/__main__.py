"""Entry point of the generator service: `rlfleet generator --model PATH_OR_NAME` (or `python -m generator`)."""

from __future__ import annotations

import asyncio
import logging
import sys

from generator.config import GeneratorConfig
from rlfleet.config import check_model_path, load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(GeneratorConfig, argv, prog="rlfleet generator")
    check_model_path(config.model, "--model")
    if config.tokenizer is not None:
        check_model_path(config.tokenizer, "--tokenizer")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported after parsing: torch and vLLM take seconds to import, --help should not.
    from generator.server import serve

    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    from rlfleet.cli import run_command

    sys.exit(run_command("generator", sys.argv[1:]))
