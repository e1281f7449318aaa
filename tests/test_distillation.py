import itertools

import datasets
import lightning as L
import pytest
import torch
import torch.nn.functional as F

from datamodules import CoNLLDataModule, IMDBDataModule, PTBDataModule, TranslationDataModule
from lightning_modules import ClassificationTask, LanguageModelTask, TaggingTask, TranslationTask
from lightning_modules.distillation import Distillation, soft_target_loss
from lightning_modules.distillation_data import sequence_level_data
from lightning_modules.task_io import task_from_pretrained
from tests.test_classification import synthetic_reviews
from tests.test_tagging import synthetic_ner
from tests.test_translation import synthetic_pairs
from zoo.common import tasks
from zoo.common.text import IGNORE_INDEX
from zoo.networks.crf import CRF
from zoo.storage.pretrained import save_pretrained


def by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 x KL(p || q) per position, written out."""
    p, q = (teacher / t).softmax(-1), (student / t).softmax(-1)
    return t * t * (p * (p.log() - q.log())).sum(-1)


def test_soft_target_loss_is_t_squared_times_the_kl_of_the_softened_outputs():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 6, 5), torch.randn(4, 6, 5)
    mask = torch.rand(4, 6) > 0.3
    torch.testing.assert_close(soft_target_loss(student, teacher, 3.0), by_hand(student, teacher, 3.0).mean())
    torch.testing.assert_close(
        soft_target_loss(student, teacher, 3.0, mask), by_hand(student, teacher, 3.0)[mask].mean()
    )
    torch.testing.assert_close(soft_target_loss(teacher, teacher, 2.0), torch.tensor(0.0))


def test_t_squared_keeps_the_soft_gradient_the_same_size_at_every_temperature():
    # Hinton et al. (2015): for zero-mean logits and a high T, the gradient of T^2 x KL with respect
    # to a student logit tends to (z_student - z_teacher) / (classes x positions), whatever T is.
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    student, teacher = student - student.mean(-1, keepdim=True), teacher - teacher.mean(-1, keepdim=True)
    limit = (student - teacher) / (10 * 8)
    for t in (10.0, 40.0):
        logits = student.clone().requires_grad_()
        soft_target_loss(logits, teacher, t).backward()
        assert torch.linalg.vector_norm(logits.grad - limit) < 0.1 * torch.linalg.vector_norm(limit)


def test_distillation_settings_are_checked():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Distillation("teacher", temperature=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        ClassificationTask(10, ["a", "b"], teacher="teacher", alpha=1.5, embedding_dim=4, hidden_size=4)
    with pytest.raises(ValueError, match="needs a CRF student"):
        TaggingTask(10, ["O"], teacher="teacher", distill_on="marginals", output="softmax")


def test_crf_marginals_equal_the_enumerated_posteriors():
    torch.manual_seed(0)
    crf = CRF(3)
    emissions, mask = torch.randn(2, 4, 3), torch.tensor([[True] * 4, [True, True, True, False]])
    for t in (1.0, 2.5):
        marginals = crf.marginals(emissions, mask, t)
        for row, n in enumerate(mask.sum(1).tolist()):
            paths = torch.tensor(list(itertools.product(range(3), repeat=n)))
            probabilities = crf_path_log_probs(crf, emissions[row, :n], paths, t).exp()
            expected = torch.stack([(probabilities[:, None] * F.one_hot(paths[:, i], 3)).sum(0) for i in range(n)])
            torch.testing.assert_close(marginals[row, :n], expected, atol=1e-5, rtol=1e-4)
        assert (marginals[1, 3] == 0).all()


def crf_path_log_probs(crf: CRF, emissions: torch.Tensor, paths: torch.Tensor, t: float) -> torch.Tensor:
    """log p(path) of every path under the CRF with all scores divided by t, by enumeration."""
    transitions, start, end = (s / t for s in crf.scores())
    scores = torch.stack(
        [
            start[p[0]] + end[p[-1]] + (emissions[range(len(p)), p] / t).sum() + transitions[p[:-1], p[1:]].sum()
            for p in paths
        ]
    )
    return scores - scores.logsumexp(0)


# ---- every task: the student's loss mixes its own loss with the teacher's soft targets ----------------


def tokenizers_of(datamodule, task_class) -> dict[str, str]:
    names = tasks.of_class(task_class).tokenizers
    return {n: getattr(datamodule, n).to_str() for n in names if getattr(datamodule, n, None) is not None}


def teacher_folder(task, datamodule, folder, tokenizers: dict[str, str] | None = None) -> str:
    """``task`` (untrained is enough here) saved as the pretrained folder a student names as teacher,
    with the tokenizers of ``datamodule`` (or ``tokenizers``)."""
    tokenizers = tokenizers or tokenizers_of(datamodule, type(task))
    return str(
        save_pretrained(
            folder, task.net, arguments=task.network_arguments, task_arguments=dict(task.hparams), tokenizers=tokenizers
        )
    )


def classification_case(tmp_path):
    dm = IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "reviews")), val_size=20, batch_size=8)
    dm.setup("fit")

    def build(**kwargs):
        return ClassificationTask(dm.vocab_size, dm.labels, **({"embedding_dim": 8, "hidden_size": 8} | kwargs))

    def logits(net, batch):
        return net(batch["input_ids"], batch["lengths"]), None

    return dm, build, logits


def language_model_case(tmp_path):
    from tests.conftest import write_synthetic_corpus

    folder = write_synthetic_corpus(tmp_path / "corpus", {"train": 60, "validation": 10, "test": 10})
    dm = PTBDataModule(data_dir=str(folder), batch_size=4, bptt=6)
    dm.setup("fit")

    def build(**kwargs):
        return LanguageModelTask(dm.vocab_size, embedding_dim=8, hidden_size=8, num_layers=1, **kwargs)

    def logits(net, batch):
        return net(batch[0])[0], batch[1] != IGNORE_INDEX

    return dm, build, logits


def tagging_case(tmp_path, **options):
    dm = CoNLLDataModule(data_dir=str(synthetic_ner(tmp_path / "ner")), min_frequency=1, batch_size=8)
    dm.setup("fit")

    def build(**kwargs):
        return TaggingTask(
            dm.vocab_size, dm.labels, dm.char_vocab_size, embedding_dim=8, hidden_size=8, num_layers=1, **kwargs
        )

    def logits(net, batch):
        emissions = net(batch["input_ids"], batch["lengths"], batch["chars"], batch["char_lengths"])
        steps = torch.arange(emissions.shape[1])
        return emissions, steps[None] < batch["lengths"][:, None]

    return dm, build, logits


def translation_case(tmp_path):
    dm = TranslationDataModule(data_dir=str(synthetic_pairs(tmp_path / "pairs")), tokenizer="word", min_frequency=1)
    dm.setup("fit")

    def build(**kwargs):
        return TranslationTask(dm.source_vocab_size, dm.target_vocab_size, dm.language_pair, embedding_dim=8, **kwargs)

    def logits(net, batch):
        return net(batch["source"], batch["lengths"], batch["target_in"]), batch["target_out"] != IGNORE_INDEX

    return dm, build, logits


CASES = {
    "classification": classification_case,
    "language_model": language_model_case,
    "tagging": tagging_case,
    "translation": translation_case,
}


@pytest.mark.parametrize("case", CASES)
def test_each_task_mixes_its_loss_with_the_teachers_soft_targets(case, tmp_path):
    dm, build, logits = CASES[case](tmp_path)
    torch.manual_seed(0)
    source = teacher_folder(build(), dm, tmp_path / "teacher")
    torch.manual_seed(1)
    student = build(teacher=source, temperature=2.0, alpha=0.3).eval()  # eval: no dropout, comparable calls
    student.tokenizer_jsons = tokenizers_of(dm, type(student))
    student.distillation.attach(student)
    teacher_net = student.distillation.teacher.net
    teacher_weights = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    batch = next(iter(dm.train_dataloader()))

    mixed = student.training_step(batch, 0)
    mixed.backward()
    distillation, student.distillation = student.distillation, None
    if case == "language_model":
        student.on_train_epoch_start()  # the first window again, from a zero state
    hard = student.training_step(batch, 0)

    student_logits, mask = logits(student.net, batch)
    teacher_logits, _ = logits(teacher_net, batch)
    soft = by_hand(student_logits, teacher_logits, 2.0)
    expected = 0.3 * hard + 0.7 * (soft[mask].mean() if mask is not None else soft.mean())
    torch.testing.assert_close(mixed, expected)
    # The teacher is frozen and apart: no gradients, unchanged, not in the student's weights.
    assert all(p.grad is None and not p.requires_grad for p in teacher_net.parameters())
    assert all(torch.equal(teacher_weights[k], v) for k, v in teacher_net.state_dict().items())
    assert not any("teacher" in name for name in student.state_dict())
    assert distillation.teacher is not None


def test_a_tagging_student_can_learn_the_teachers_crf_marginals(tmp_path):
    dm, build, logits = tagging_case(tmp_path)
    torch.manual_seed(0)
    source = teacher_folder(build(), dm, tmp_path / "teacher")
    student = build(teacher=source, temperature=1.5, alpha=0.0, distill_on="marginals").eval()
    student.tokenizer_jsons = tokenizers_of(dm, type(student))
    student.distillation.attach(student)
    batch = next(iter(dm.train_dataloader()))
    student.training_step(batch, 0).backward()
    emissions, mask = logits(student.net, batch)
    teacher = student.distillation.teacher.net
    p = teacher.crf.marginals(logits(teacher, batch)[0], mask, 1.5)
    q = student.net.crf.marginals(emissions, mask, 1.5)
    assert torch.allclose(p.sum(-1)[mask], torch.ones(int(mask.sum())), atol=1e-5)
    assert (q - p).abs().max() > 1e-3  # an untrained student: something to learn
    # The soft loss reaches the transitions through the marginals, not only the emissions.
    assert student.net.crf.transitions.grad.abs().sum() > 0


class AdamTask(ClassificationTask):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class CountingTeacher(torch.nn.Module):
    """Wraps a teacher network and counts the texts it is run on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.texts = net, 0

    def forward(self, input_ids, lengths):
        self.texts += len(input_ids)
        return self.net(input_ids, lengths)


def fit_student(tmp_path, dm, teacher: str | None, alpha: float, epochs: int = 2, counting: bool = False):
    torch.manual_seed(0)
    student = AdamTask(dm.vocab_size, dm.labels, teacher, 2.0, alpha, embedding_dim=8, hidden_size=8)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    if counting:
        original = student.distillation.attach

        def attach(task):
            original(task)
            student.distillation.teacher.net = CountingTeacher(student.distillation.teacher.net)

        student.distillation.attach = attach
    trainer.fit(student, dm)
    return student


def test_alpha_one_is_plain_training_and_the_teacher_runs_in_the_first_epoch_only(tmp_path):
    dm = IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "reviews")), val_size=20, batch_size=8)
    torch.manual_seed(5)
    teacher = ClassificationTask(dm.vocab_size, dm.labels, embedding_dim=8, hidden_size=8)
    source = teacher_folder(teacher, dm, tmp_path / "teacher")

    plain = fit_student(tmp_path, dm, None, 0.5)
    with_alpha_one = fit_student(tmp_path, dm, source, 1.0)
    distilled = fit_student(tmp_path, dm, source, 0.5, epochs=3, counting=True)
    for name, weight in plain.state_dict().items():
        torch.testing.assert_close(with_alpha_one.state_dict()[name], weight, rtol=0, atol=0)
    assert any(not torch.equal(distilled.state_dict()[k], v) for k, v in plain.state_dict().items())
    # The teacher's logits are cached: after the first epoch it is not run again.
    one_epoch = fit_student(tmp_path, dm, source, 0.5, epochs=1, counting=True)
    assert 0 < distilled.distillation.teacher.net.texts == one_epoch.distillation.teacher.net.texts


def test_a_teacher_of_other_labels_vocabulary_or_task_is_refused(tmp_path):
    dm = IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "reviews")), val_size=20, batch_size=8)
    student = ClassificationTask(dm.vocab_size, dm.labels, teacher="x", embedding_dim=8, hidden_size=8)
    student.tokenizer_jsons = tokenizers_of(dm, ClassificationTask)

    def refused(teacher_task, tokenizers, match):
        folder = teacher_folder(teacher_task, dm, tmp_path / f"teacher{len(list(tmp_path.iterdir()))}", tokenizers)
        with pytest.raises(ValueError, match=match):
            Distillation(folder).attach(student)

    other_labels = ClassificationTask(dm.vocab_size, ["negative", "positive"], embedding_dim=8, hidden_size=8)
    refused(other_labels, student.tokenizer_jsons, r"teacher .* was trained with labels \['negative', 'positive'\]")

    other_dm = IMDBDataModule(data_dir=str(synthetic_reviews(tmp_path / "more", n=60)), val_size=20, lowercase=False)
    other_vocabulary = ClassificationTask(other_dm.vocab_size, dm.labels, embedding_dim=8, hidden_size=8)
    other_tokenizer = tokenizers_of(other_dm, ClassificationTask)
    refused(other_vocabulary, other_tokenizer, r"another tokenizer vocabulary \(\d+ tokens, not \d+\) than the student")

    language_model = LanguageModelTask(dm.vocab_size, embedding_dim=8, hidden_size=8, num_layers=1)
    refused(language_model, student.tokenizer_jsons, "holds a language_model model, not a classification one")


@pytest.mark.parametrize("nested", [False, True])
def test_sequence_level_data_replaces_training_targets_with_the_teachers_translations(tmp_path, nested):
    folder = synthetic_pairs(tmp_path / "pairs", rows=(("train", 30), ("validation", 8), ("test", 8)), nested=nested)
    column = {"translation_column": "translation"} if nested else {}
    dm = TranslationDataModule(data_dir=str(folder), tokenizer="word", min_frequency=1, **column)
    torch.manual_seed(0)
    teacher = TranslationTask(dm.source_vocab_size, dm.target_vocab_size, dm.language_pair, embedding_dim=8)
    source = teacher_folder(teacher, dm, tmp_path / "teacher")
    out = sequence_level_data(source, folder, tmp_path / "distilled", beam_size=3, batch_size=7, **column)

    def rows(folder):
        train = datasets.Dataset.from_parquet(str(folder / "train.parquet"))
        return (
            train["translation"]
            if nested
            else [{"de": d, "en": e} for d, e in zip(train["de"], train["en"], strict=True)]
        )

    pairs, got = rows(folder), rows(out)
    sources = [pair["de"] for pair in pairs]
    model = task_from_pretrained(source)  # batches of 7 as above: an untrained model uses its whole length budget
    expected = [t for i in range(0, len(sources), 7) for t in model.translate(sources[i : i + 7], beam_size=3)]
    assert [pair["de"] for pair in got] == sources
    assert [pair["en"] for pair in got] == expected
    for split in ("validation", "test"):  # the student is still scored against the references
        assert (out / f"{split}.parquet").read_bytes() == (folder / f"{split}.parquet").read_bytes()
    with pytest.raises(FileNotFoundError, match="has no train.parquet"):
        sequence_level_data(source, tmp_path, tmp_path / "other")
    with pytest.raises(FileExistsError, match="not empty"):
        sequence_level_data(source, folder, folder, **column)
