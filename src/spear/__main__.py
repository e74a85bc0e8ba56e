from spear.cli import entry

entry()
