"""`rlfleet up --env`: the environment service of a multi-turn run, its warm-start and its config tables.

With `--env builtin:calculator` the learner rolls out tool-using trajectories against an
`rlfleet env-server` running `tasks/calculator_env.py`; the environment's get_reward() is the reward
(a `--reward-script` adds a reward service beside it). The tiny model writes tool calls in its own
compact format, `calc(37*58)`, taught by a warm-start on whole conversations (launcher/warmstart_tools.py).
"""

from __future__ import annotations

from pathlib import Path

from launcher.up import BUILTIN_MODEL, UpConfig
from rlfleet.config import ConfigError
from tasks import ENVIRONMENT_SCRIPTS

BUILTIN = "builtin:"


def env_script(config: UpConfig) -> Path:
    """The environment script `--env` names (a built-in's, or the file)."""
    assert config.env is not None
    if config.env.startswith(BUILTIN):
        return ENVIRONMENT_SCRIPTS[config.env[len(BUILTIN):]]
    return Path(config.env)


def check_env_option(config: UpConfig) -> None:
    """`--env` names a built-in environment or an existing script; ConfigError naming the option otherwise."""
    if config.env is None:
        return
    name = config.env[len(BUILTIN):] if config.env.startswith(BUILTIN) else None
    if name is not None and name not in ENVIRONMENT_SCRIPTS:
        raise ConfigError(f"--env: unknown built-in environment {config.env!r}; choose from "
                          f"{[BUILTIN + n for n in sorted(ENVIRONMENT_SCRIPTS)]} or give an environment script")
    if name is None and not Path(config.env).is_file():
        raise ConfigError(f"--env: no such file: {config.env}")


def uses_reward_service(config: UpConfig) -> bool:
    """Without --env a reward service always runs; with it, only for a --reward-script of the user's."""
    return config.env is None or config.reward_script is not None


def tool_warm_start(config: UpConfig, base: Path, run_dir: Path) -> tuple[str, float]:
    """The visible warm-start phase of a built-in tool task: whole conversations, some calling the tool."""
    from launcher.warmstart import warm_start_examples
    from launcher.warmstart_tools import calculator_examples
    from learner.pipeline.dataset import builtin_rows
    from learner.pipeline.turns import TurnRenderer

    rows, _ = builtin_rows(config.dataset.split(":", 1)[1], seed=1234 + config.seed)
    examples = calculator_examples(TurnRenderer.from_pretrained(str(base)), rows, config.warmstart_tool_fraction,
                                   seed=config.seed)
    print(f"phase 1/3  supervised warm-start of the tiny model: {config.warmstart_steps} steps on "
          f"{config.dataset} conversations, {config.warmstart_tool_fraction:.0%} of them calling the calculator "
          "(teaches the tool-call format; RL finds out that the tool pays)", flush=True)
    result = warm_start_examples(base, run_dir / "models" / "warm", examples, config.warmstart_steps,
                                 seed=config.seed)
    print(f"           done in {result.seconds:.0f}s, final loss {result.final_loss:.3f}", flush=True)
    return str(result.path), result.seconds


def add_env_tables(tables: dict, config: UpConfig, address: str) -> None:
    """The environment service's table, and the learner's multi-turn source pointed at it."""
    tables["env"] = {"script": str(env_script(config)), "workers": 1}
    # Each turn re-sends the whole conversation; vLLM caches prefixes in whole blocks, and the CPU's default
    # block (128 tokens) is longer than the tiny model's whole conversations: nothing would be reused.
    tables["generator"]["block_size"] = 32
    source = tables["learner"]["source"]
    # The tiny model writes calc(37*58) (one token per byte: the JSON form would be 60 tokens to learn).
    source["environment"] = {"address": address, "max_turns": config.max_turns,
                             "tool_call_format": "compact" if config.model == BUILTIN_MODEL else "json"}
    if not uses_reward_service(config):
        source["rewards"] = []
