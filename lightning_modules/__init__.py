"""LightningModules (one per task, see ``zoo.common.tasks``) and the ``rnnzoo`` command.

The tasks are imported on first use, so that ``rnnzoo serve`` (``lightning_modules.cli``) runs
without torch.
"""

from zoo.common import tasks

__all__ = [task.lightning_module_name for task in tasks.TASKS.values()]


def __getattr__(name: str):
    if name in __all__:
        return tasks.get(name).load("lightning_module")
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
