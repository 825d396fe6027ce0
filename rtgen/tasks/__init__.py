"""Tasks, one file a task: a task turns batches into losses and inputs into predictions, and names
its validation metrics and the one that selects checkpoints. Each file registers itself
(`@register_task("dose_regression")`); every module here is imported when the registry is first used.
"""

from rtgen.core.registry import TASKS, register_task
from rtgen.tasks.base import Task, task_class, task_from_checkpoint

__all__ = ["TASKS", "Task", "register_task", "task_class", "task_from_checkpoint"]
