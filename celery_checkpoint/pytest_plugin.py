"""Fixtures for testing your own checkpointed tasks (placeholder, see issue 4)."""
