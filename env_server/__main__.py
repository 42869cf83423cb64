"""`rlfleet env-server --script my_env.py [--environment NAME ...]`: serve environment sessions over gRPC.

`rlfleet env-server --check my_env.py [--sample rows.jsonl]` dry-runs a script instead.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from env_server.config import EnvConfig
from rlfleet.config import ConfigError, check_file, load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(EnvConfig, argv, prog="rlfleet env-server")
    for option, path, what in (("--script", config.script, "environment script"),
                               ("--check", config.check, "environment script"), ("--sample", config.sample, "rows")):
        if path is not None:
            check_file(path, option, what)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from env_server.core import EnvironmentCore
    from rlfleet.workers.scripts import ScriptError

    if config.check is not None:
        from env_server.check import run_check

        return run_check(config)
    try:
        core = EnvironmentCore(config)
        core.start_workers()  # before the gRPC server exists
    except ScriptError as err:  # FILE:LINE of the script, or the --environment name it lacks
        raise ConfigError(str(err)) from None
    from env_server.server import serve

    try:
        asyncio.run(serve(config.server, core))
    finally:
        core.close()
    return 0


if __name__ == "__main__":
    from rlfleet.cli import run_command

    sys.exit(run_command("env-server", sys.argv[1:]))
