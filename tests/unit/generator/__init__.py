"""Unit tests of the generator package."""
