"""`LocalNode`: the embedded, local-mode node for use as a Python library."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spear.config import Settings, default_data_dir
from spear.core.node import Spearlet
from spear.node.assembly import local_components


class LocalNode(Spearlet):
    """A local-mode SPEARlet in this process.

    ``async with LocalNode("/tmp/spear") as node: task = await node.run(spec)``
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            path = Path(data_dir) if data_dir is not None else default_data_dir(os.environ)
            settings = Settings(data_dir=path, **overrides)
        super().__init__(**local_components(settings, hold_kv=True))
