"""Tasks on a node: their records, admission against the node's resources, and the
controller that runs them (seed §2.1, §4).

- `store.py`: TaskStore, task records in the KV, each change a compare-and-swap
- `codec.py`: the one Task codec (a record's bytes), with its speed-up
- `admission.py`: the node's CPU and memory, reserved first come, first served
- `hooks.py`: FinishedHook, what services do once tasks end, and its input
- `controller.py`: TaskController, accept, admit, run, record, cancel
"""

from spear.core.tasks.codec import decode_task, encode_task
from spear.core.tasks.controller import TaskController
from spear.core.tasks.hooks import FinishedHook, TasksFinished
from spear.core.tasks.store import TaskStore

__all__ = [
    "FinishedHook",
    "TaskController",
    "TaskStore",
    "TasksFinished",
    "decode_task",
    "encode_task",
]
