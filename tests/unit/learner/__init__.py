"""Unit tests of the learner."""
