"""What spear logs while a test looks: `with SpearLog("WARNING") as messages: ...`."""

from __future__ import annotations


class SpearLog:
    """The spear messages logged at `level` or above while it is entered, each formatted
    by `format` (loguru's)."""

    def __init__(self, level: str, format: str = "{level}: {message}") -> None:
        self.level = level
        self.format = format
        self.messages: list[str] = []

    def __enter__(self) -> list[str]:
        from loguru import logger

        self._sink = logger.add(
            lambda m: self.messages.append(str(m)),
            level=self.level,
            format=self.format,
            filter="spear",
        )
        logger.enable("spear")
        return self.messages

    def __exit__(self, *exc: object) -> None:
        from loguru import logger

        logger.disable("spear")
        logger.remove(self._sink)
