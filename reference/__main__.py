"""Entry point of the reference service: `rlfleet reference --model PATH_OR_NAME [--config run.toml]`."""

from __future__ import annotations

import asyncio
import logging
import sys

from reference.config import ReferenceConfig
from rlfleet.config import check_model_path, load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(ReferenceConfig, argv, prog="rlfleet reference")
    check_model_path(config.model, "--model")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch and transformers are imported only here, after --help and config errors have returned.
    from reference.server import serve

    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    from rlfleet.cli import run_command

    sys.exit(run_command("reference", sys.argv[1:]))
