"""The `spear` command."""

from spear.cli.app import main

__all__ = ["main"]
