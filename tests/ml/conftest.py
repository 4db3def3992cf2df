"""Fixtures of the engine tests live in tests/conftest.py (tiny models shared with the job tests)."""
