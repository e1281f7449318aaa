"""The task records: every part they name exists, and a name is found from whatever a file stores."""

import dataclasses
import inspect
from functools import cached_property

import pytest
from pydantic import BaseModel

from deploy.graphs import Interface
from deploy.open_inference import Tensors
from deploy.runtime import Predictor
from deploy.serving import TaskAPI
from lightning_modules.task_module import TaskModule
from zoo.common import tasks


def part_checks() -> dict:
    """For each field of ``Task``, what the part it names must be."""
    import lightning as L
    from torch import nn

    def subclass_of(base):
        return lambda task, part: issubclass(task.load(part), base)

    return {
        "name": lambda task, part: tasks.get(task.name) is task,
        # (model, items, options): the options the record names
        "predict": lambda task, part: inspect.signature(task.load(part)).parameters["options"].annotation
        is task.load("options"),
        "options": lambda task, part: dataclasses.is_dataclass(task.load(part)),
        "architecture": subclass_of(nn.Module),
        "ensemble": subclass_of(nn.Module),
        "lightning_module": subclass_of(TaskModule),
        "datamodule": subclass_of(L.LightningDataModule),
        "graphs": lambda task, part: inspect.signature(task.load(part)).return_annotation is Interface,
        "predictor": subclass_of(Predictor),
        "api": lambda task, part: isinstance(api := task.load(part), TaskAPI) and issubclass(api.request, BaseModel),
        "tensors": lambda task, part: isinstance(task.load(part), Tensors),
        "parity": lambda task, part: list(inspect.signature(task.load(part)).parameters)
        == ["predictor", "network", "rows", "batch_size"],
        "usage": lambda task, part: task.usage.startswith(".") and "(" in task.usage,
        # the datamodule provides each tokenizer the task carries
        "tokenizers": lambda task, part: all(
            isinstance(inspect.getattr_static(task.load("datamodule"), name), property | cached_property)
            for name in task.tokenizers
        ),
    }


@pytest.mark.parametrize("task", tasks.TASKS.values(), ids=lambda task: task.name)
def test_every_part_a_task_names_exists_and_is_what_it_says(task):
    checks = part_checks()
    for field in dataclasses.fields(tasks.Task):  # a new part is checked for every task, or this fails
        assert field.name in checks, f"tests/test_tasks.py has no check for the part {field.name!r}"
        assert checks[field.name](task, field.name), (task.name, field.name)
    assert tasks.of_class(task.load("architecture")) is task is tasks.of_class(task.load("lightning_module"))


def test_a_task_is_found_by_its_name_or_the_class_name_older_files_stored():
    assert tasks.get("translation") is tasks.get("TranslationTask") is tasks.TASKS["translation"]
    with pytest.raises(ValueError, match="unknown task 'parsing' .*known: language_model, classification"):
        tasks.get("parsing", "model/config.json")

    class Distilled(tasks.get("classification").load("lightning_module")):
        pass

    assert tasks.of_class(Distilled).name == "classification"  # subclasses keep their task
    with pytest.raises(ValueError, match="not a part of any rnnzoo task"):
        tasks.of_class(int)
