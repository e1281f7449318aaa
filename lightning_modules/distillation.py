"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a trained teacher of the same task and data
gives temperature-softened targets that train a smaller student.

    loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))

Each task computes its own teacher outputs (class logits, per-token logits or emissions, per-step
logits under teacher forcing) and mixes them in with ``Distillation.loss``. Translation also has
sequence-level distillation (Kim & Rush 2016): the student trains on the
teacher's beam translations, generated once (``lightning_modules.distillation_data``).
"""

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_modules.task_io import load_task
from zoo.common import tasks
from zoo.common.text import vocabulary_difference
from zoo.storage.hub import ZooError


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)) over the last axis, averaged over the
    positions where ``mask`` is True (all when None).

    The soft targets' gradients scale as 1 / T^2; multiplying by T^2 keeps their weight against the
    hard loss the same whatever the temperature (Hinton et al. 2015, section 2)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * kl_per_position(log_student, log_teacher, mask)


def kl_per_position(log_student: torch.Tensor, log_teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (masked) positions of KL(teacher || student), both given as log-probabilities."""
    kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)
    return kl[mask].mean() if mask is not None else kl.mean()


class TeacherError(ValueError):
    """The teacher cannot be loaded or does not fit the student."""


class Distillation:
    """A student task's teacher and how much to trust it.

    Args:
        source: the teacher: a ``.ckpt``, pretrained folder, zoo entry name, URL or ``hf://``. It must
            be a model of the student's task trained with the same vocabulary and labels.
        temperature: T > 0 softens both distributions (T = 1: the plain softmax).
        alpha: the weight of the hard labels' loss, in [0, 1]; 1 is plain training.

    The teacher is loaded when training starts (``attach``), not when a checkpoint of the student is
    loaded to test or export it. It stays in eval mode without gradients and is not a submodule:
    its weights are neither trained nor saved with the student, and under DDP each rank runs its
    own copy on its own batches.
    """

    def __init__(self, source: str | os.PathLike, temperature: float = 1.0, alpha: float = 0.5):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.source, self.temperature, self.alpha = str(source), temperature, alpha
        self.teacher = None
        self._cache: dict[bytes, torch.Tensor] = {}

    def attach(self, student) -> None:
        """Load the teacher for ``student`` (a task whose tokenizers are set), refusing a teacher of
        another task, vocabulary or label set (``TeacherError``)."""
        if self.teacher is not None:
            return
        try:
            teacher = load_task(self.source, expected=tasks.of_class(type(student)).load("lightning_module"))
            difference = vocabulary_difference(teacher.tokenizer_jsons, student.tokenizer_jsons)
            if difference:
                raise ValueError(
                    f"it has {difference} than the student's data: train the student on the teacher's "
                    f"vocabulary (--data.init_args.tokenizer_from {self.source})"
                )
            student.check_trained_on_same_data(dict(teacher.hparams), "it")
        except (ZooError, OSError, ValueError) as err:
            raise TeacherError(f"teacher {self.source}: {err}") from None
        self.teacher = teacher.eval().requires_grad_(False)

    def outputs(self, device: torch.device, *inputs, **kwargs):
        """What the teacher's network returns for ``inputs``, computed without gradients on ``device``."""
        if self.teacher is None:
            raise RuntimeError("the teacher is loaded when training starts (Distillation.attach)")
        net = self.teacher.net
        if next(net.parameters()).device != device:
            net.to(device)
        with torch.no_grad():
            return net(*inputs, **kwargs)

    def cached(self, keys: list[bytes], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Teacher outputs ``(B, ...)`` looked up by example (``keys``), computed for the whole batch
        the first time one of its examples is met. The teacher is deterministic in eval mode, so a
        cached output is exactly the one it would give again."""
        if not all(key in self._cache for key in keys):
            for key, row in zip(keys, compute(), strict=True):
                self._cache[key] = row
        return torch.stack([self._cache[key] for key in keys])

    def loss(
        self,
        hard_loss: torch.Tensor,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """alpha x ``hard_loss`` + (1 - alpha) x the soft-target loss (``soft_target_loss``)."""
        if self.alpha == 1.0:
            return hard_loss
        return self.mix(hard_loss, soft_target_loss(student_logits, teacher_logits, self.temperature, mask))

    def mix(self, hard_loss: torch.Tensor, soft_loss: torch.Tensor) -> torch.Tensor:
        return self.alpha * hard_loss + (1.0 - self.alpha) * soft_loss


def distillation_from(teacher: str | None, temperature: float, alpha: float) -> Distillation | None:
    """The tasks' ``teacher``/``temperature``/``alpha`` arguments as a ``Distillation`` (None: no teacher)."""
    return Distillation(teacher, temperature, alpha) if teacher else None
