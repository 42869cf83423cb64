"""The `rlfleet` command: one console script whose subcommands start services and tools.

Subcommands are resolved lazily (a module path, imported on use) so that `rlfleet --help` returns
at once without importing torch or vLLM. A `ConfigError` from any of them (a bad option value, a
missing file, a broken reward script) ends as one `rlfleet NAME: error: ...` message and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with a `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": ("launcher.tiny_model", "build the tiny local test/demo model into a folder"),
    "warm-start": ("launcher.warmstart", "supervised warm-start of the tiny model on a task (the first phase of up)"),
    "generator": ("generator.__main__", "serve rollouts from vLLM with hot-swapped LoRA adapters"),
    "reward-server": ("reward_server.__main__", "serve Python reward scripts or a reward model"),
    "env-server": ("env_server.__main__", "serve a Python environment's multi-turn, tool-using sessions"),
    "reference": ("reference.__main__", "serve the frozen reference model's per-token log-probs"),
    "learner": ("learner.__main__", "train a LoRA adapter with DeepSpeed and push it to generators"),
    "train-rm": ("learner.reward_model.__main__", "train a Bradley-Terry reward model on preference pairs"),
    "up": ("launcher.up", "run the whole cluster as local processes (the main job)"),
    "plot": ("launcher.plot", "plot a run's reward, KL, length and throughput to RUN_DIR/training.png"),
    "export": ("learner.export", "export a trained adapter; --merge writes a merged Hugging Face model"),
    "health": ("rlfleet.health", "check a service's gRPC health (used by container health checks)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rlfleet COMMAND [options]   (rlfleet COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from rlfleet import __version__
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlfleet: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_command(name, rest)


def run_command(name: str, argv: list[str]) -> int:
    """Runs subcommand `name`; a ConfigError becomes one message on stderr and exit code 2, no traceback."""
    from rlfleet.config import ConfigError  # pydantic: not needed by `rlfleet --help`

    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"rlfleet {name}: not available in this version yet ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(argv) or 0)
    except ConfigError as err:
        print(f"rlfleet {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
