"""Callbacks the tests add to `rnnzoo fit` runs (``--trainer.callbacks+=tests.callbacks.…``)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL the training process once ``step`` optimizer steps are done: a crash mid-epoch."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAtStep(Callback):
    """Set every weight to NaN before step ``step``, as a diverging update would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            for parameter in pl_module.parameters():
                parameter.data.fill_(float("nan"))


class OverflowAtStep(Callback):
    """After update ``step`` (its loss finite), set one weight to infinity, as an overflowing update would,
    just before the checkpoint of that step is written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            next(pl_module.parameters()).data[0] = float("inf")
