"""The task records: every part they name exists, and a name is found from whatever a file stores."""

import inspect
from functools import cached_property

import pytest
from pydantic import BaseModel

from deploy.graphs import Interface
from deploy.runtime import Predictor
from deploy.service import TaskAPI
from lightning_modules.task_module import TaskModule
from zoo import tasks


@pytest.mark.parametrize("task", tasks.TASKS.values(), ids=lambda task: task.name)
def test_every_part_a_task_names_exists_and_is_what_it_says(task):
    import lightning as L
    from torch import nn

    assert issubclass(task.load("architecture"), nn.Module)
    assert issubclass(task.load("lightning_module"), TaskModule)
    assert issubclass(task.load("datamodule"), L.LightningDataModule)
    assert inspect.signature(task.load("graphs")).return_annotation is Interface
    assert issubclass(task.load("predictor"), Predictor)
    api = task.load("api")
    assert isinstance(api, TaskAPI) and issubclass(api.request, BaseModel)
    assert list(inspect.signature(task.load("parity")).parameters) == ["predictor", "network", "rows", "batch_size"]
    for name in task.tokenizers:  # the datamodule provides each tokenizer the task carries
        assert isinstance(inspect.getattr_static(task.load("datamodule"), name), property | cached_property)
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
