"""Reward server: user Python reward scripts, built-in rewards and reward models, scored in isolated workers."""
