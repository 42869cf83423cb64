"""rlfleet reference service: per-token log-probs of completions under the frozen reference model."""
