"""`rlfleet reward-server --script my_reward.py [--reward NAME:WEIGHT ...] [--model DIR]`: serve rewards over gRPC.

`rlfleet reward-server --check my_reward.py --sample data.jsonl` dry-runs a script on a few rows instead.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from reward_server.config import RewardConfig
from rlfleet.config import load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(RewardConfig, argv, prog="rlfleet reward-server")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from reward_server.core import RewardCore
    from reward_server.scripts import ScriptError

    if config.check is not None:
        from reward_server.check import run_check

        return run_check(config)
    try:
        core = RewardCore(config)
        core.start_workers()  # before the gRPC server exists: workers are forked
    except ScriptError as err:
        print(f"rlfleet reward-server: error: {err}", file=sys.stderr)
        return 2
    from reward_server.server import serve

    try:
        asyncio.run(serve(config.server, core))
    finally:
        core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
