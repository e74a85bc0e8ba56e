"""The `spear` command (console script `spear = "spear.cli:main"`); app.py builds it."""

from spear.cli.app import app, main

__all__ = ["app", "main"]
