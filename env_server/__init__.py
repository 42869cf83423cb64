"""Environment service: multi-turn sessions with a user's Python environment (TRL environment_factory form), isolated."""
