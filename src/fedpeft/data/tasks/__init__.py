"""Tasks: one module per task, each registering one :class:`Task` in :data:`TASKS` when imported.

Every module of this package except ``base`` and ``common`` is imported here, so adding a task is adding
its file; nothing else lists tasks. The config's ``data.task`` choices, ``fedpeft tasks`` and the
experiment read them from the registry. Importing this package loads no torch.
"""

from __future__ import annotations

from fedpeft.data.tasks.base import TASKS, Task, describe_tasks, get_task, register_task, rows_for_task, task_names
from fedpeft.registry import import_parts

import_parts(__name__, __path__, shared=("base", "common"))

__all__ = ["TASKS", "Task", "describe_tasks", "get_task", "register_task", "rows_for_task", "task_names"]
