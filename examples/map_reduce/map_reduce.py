"""map_reduce: a word count over objects, one child task per object (subtasks).

    echo "the cat sat on the mat" | spear obj put docs/a -
    echo "the dog sat" | spear obj put docs/b -
    spear run examples/map_reduce/map_reduce.py docs/   # prints {"the": 3, "sat": 2, ...}

The parent lists the objects under a prefix and starts `word_count.py` for each, with
the object as its input (held for the child while it runs). Children go through the
node's normal submit path, so in a cluster the scheduler spreads them. The parent waits
for all of them, merges their counts, prints the total and sets it as its result (`spear
result ID` reads it again later). A child that
fails fails the whole job with the child's reason.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

from spear import agent


def main() -> int:
    prefix = sys.argv[1] if len(sys.argv) > 1 else "docs/"
    mapper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "word_count.py")
    a = agent.Agent()
    keys = [info.key for info in a.list_objects(prefix)]
    if not keys:
        print(f"no objects under {prefix!r}", file=sys.stderr)
        return 2
    children = [a.spawn(mapper, runtime="process", inputs=[key]) for key in keys]
    a.wait(children)
    total: Counter[str] = Counter()
    for child in children:
        end = child.result()
        if end["state"] != "COMPLETED":
            print(f"child {child.id} failed: {end['reason']}", file=sys.stderr)
            return 1
        total.update(json.loads(end["output"]))
    a.log(f"counted {sum(total.values())} words in {len(keys)} objects")
    counts = json.dumps(dict(total.most_common()))
    print(counts)
    a.set_result(counts.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
