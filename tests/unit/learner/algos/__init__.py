"""Unit tests of the learner's pure algorithm functions."""
