"""rlfleet: online RL post-training for LLMs as separate gRPC services (shared library)."""

__version__ = "0.1.0"
