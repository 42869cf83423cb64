"""Reward-model training: `rlfleet train-rm` fits a Bradley-Terry sequence classifier to preference pairs.

    rlfleet train-rm --model models/sft --pairs prefs.jsonl --out models/rm    # prompt / chosen / rejected columns
    rlfleet reward-server --model models/rm                                     # serves the folder as is

config.py holds the command's config, pairs.py reads and splits the pairs, trainer.py trains and
writes the Hugging Face folder, __main__.py is the command.
"""
