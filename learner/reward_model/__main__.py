"""`rlfleet train-rm --model DIR --pairs prefs.jsonl --out DIR`: trains a Bradley-Terry reward model for `rlfleet reward-server --model`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from learner.reward_model.config import TrainRewardModelConfig
from rlfleet.config import ConfigError, check_model_path, load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config(TrainRewardModelConfig, argv, prog="rlfleet train-rm")
    check_model_path(config.model, "--model")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from learner.reward_model.pairs import load_pairs, split_by_prompt

    pairs = load_pairs(config.pairs)
    train, held_out = split_by_prompt(pairs, config.eval_fraction, config.seed)
    if not held_out or not train:
        raise ConfigError(f"--pairs: {config.pairs} has pairs of {len({p.prompt for p in pairs})} prompt(s); "
                          f"holding out --eval-fraction {config.eval_fraction} of them needs at least two")
    # DeepSpeed compiles its CPU ops once per environment; keep them beside it, as the learner does.
    if "VIRTUAL_ENV" in os.environ:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(os.environ["VIRTUAL_ENV"]) / "torch_extensions"))
    from learner.reward_model.trainer import train_reward_model

    result = train_reward_model(config, train, held_out)
    print(f"== rlfleet train-rm: {config.pairs} ==\n"
          f"pairs                   {result.train_pairs} train, {result.held_out_pairs} held out "
          f"({result.dropped_pairs} longer than --max-length dropped)\n"
          f"steps                   {result.steps} (final loss {result.final_loss:.4f})\n"
          f"held-out accuracy       {result.held_out_accuracy_before:.3f} (before) -> {result.held_out_accuracy:.3f}\n"
          f"held-out scores         mean {result.score_mean:.3f}, std {result.score_std:.3f}\n"
          f"wall time               {result.seconds:.0f}s\n"
          f"wrote {config.out}: serve it with `rlfleet reward-server --model {config.out}`")
    return 0


if __name__ == "__main__":
    from rlfleet.cli import run_command

    sys.exit(run_command("train-rm", sys.argv[1:]))
