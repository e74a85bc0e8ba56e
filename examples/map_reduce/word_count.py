"""word_count: the map step of map_reduce.py. Counts the words of its input objects
(SPEAR_INPUTS, set by the parent) and sets the counts as its result."""

from __future__ import annotations

import json
import os
from collections import Counter

from spear import agent

a = agent.Agent()
counts: Counter[str] = Counter()
for key in filter(None, os.environ.get("SPEAR_INPUTS", "").split(",")):
    counts.update(a.get(key).decode().lower().split())
a.set_result(json.dumps(counts).encode())
