"""chainlit-orm benchmark harness (issue #8). Run: ``.venv/bin/python -m bench --quick``."""
