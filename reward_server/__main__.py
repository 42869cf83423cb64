"""`rlfleet reward-server --script my_reward.py [--reward NAME:WEIGHT ...] [--model DIR]`: serve rewards over gRPC.

`rlfleet reward-server --check my_reward.py --sample data.jsonl` dry-runs a script on a few rows instead.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from reward_server.config import RewardConfig
from rlfleet.config import ConfigError, check_file, check_model_path, load_config


def check_paths(config: RewardConfig) -> None:
    """Every file the config names exists, before workers or a model start; ConfigError names the option."""
    for option, path, what in (("--script", config.script, "reward script"), ("--check", config.check, "reward script"),
                               ("--sample", config.sample, "sample rows file")):
        if path is not None:
            check_file(path, option, what)
    if config.model is not None:
        check_model_path(config.model, "--model")


def main(argv: list[str] | None = None) -> int:
    config = load_config(RewardConfig, argv, prog="rlfleet reward-server")
    check_paths(config)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from reward_server.core import RewardCore
    from rlfleet.workers.scripts import ScriptError

    if config.check is not None:
        from reward_server.check import run_check

        return run_check(config)
    try:
        core = RewardCore(config)
        core.start_workers()  # before the gRPC server exists: workers are forked
    except ScriptError as err:  # FILE:LINE of the script, or the --reward name it lacks
        raise ConfigError(str(err)) from None
    from reward_server.server import serve

    # What start-up allocated (modules, the pool) lives as long as the process: kept out of the cyclic
    # GC's scans, a collection walks only what requests allocate (28 -> 14 us per call of 512 items).
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(serve(config.server, core))
    finally:
        core.close()
    return 0


if __name__ == "__main__":
    from rlfleet.cli import run_command

    sys.exit(run_command("reward-server", sys.argv[1:]))
