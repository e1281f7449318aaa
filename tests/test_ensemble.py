import json

import lightning as L
import pytest
import torch

from lightning_modules.task_io import average_checkpoints, task_from_pretrained, write_ensemble
from tests.conftest import rnnzoo
from tests.test_distillation import CASES, classification_case, tagging_case, teacher_folder
from zoo.networks.crf import viterbi
from zoo.networks.ensemble import Ensemble
from zoo.storage.pretrained import load_pretrained

PREDICT = {
    "classification": lambda task: task.classify(["A movie. It was good", "It was bad filler filler"]),
    "language_model": lambda task: [task.generate("w1 w2", 8, temperature=0.0), task.generate("", 8, seed=3)],
    "tagging": lambda task: task.tag(["Bob Smith went to Paris", "the cat saw Alice"]),
    "translation": lambda task: [task.translate(["g1 g2 g3.", "g4 g5."], beam_size=b) for b in (1, 5)],
}


def evaluate(task, datamodule, folder) -> dict:
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    return trainer.test(task, datamodule, verbose=False)[0]


@pytest.mark.parametrize("case", CASES)
def test_an_ensemble_of_one_model_repeated_predicts_and_scores_like_the_model(case, tmp_path):
    dm, build, _ = CASES[case](tmp_path)
    torch.manual_seed(0)
    single = teacher_folder(build(), dm, tmp_path / "single")
    model = task_from_pretrained(single)
    for members in ([single], [single, single, single]):
        ensemble = task_from_pretrained(write_ensemble(members, tmp_path / f"ensemble{len(members)}"))
        assert isinstance(ensemble.net, Ensemble) and len(ensemble.net.members) == len(members)
        predicted, expected = PREDICT[case](ensemble), PREDICT[case](model)
        if case == "classification":  # probabilities to float precision, the labels exactly
            assert [row["label"] for row in predicted] == [row["label"] for row in expected]
            for row, reference in zip(predicted, expected, strict=True):
                assert row["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)
        else:  # tags, greedy/sampled continuations, greedy and beam-5 translations
            assert predicted == expected
        metrics, reference = evaluate(ensemble, dm, tmp_path), evaluate(model, dm, tmp_path)
        assert metrics.keys() == reference.keys()
        for name, value in reference.items():  # test BLEU at the task's beam 5 included
            assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def seeded_folders(build, datamodule, tmp_path, count: int) -> list[str]:
    """``count`` untrained models of one architecture (seeds 0, 1...) as pretrained folders."""
    folders = []
    for seed in range(count):
        torch.manual_seed(seed)
        folders.append(teacher_folder(build(), datamodule, tmp_path / f"m{seed}"))
    return folders


def ensemble_members_and_batch(folders, datamodule, tmp_path):
    """The ensemble of ``folders``, its members loaded alone, and a test batch."""
    ensemble = load_pretrained(write_ensemble(folders, tmp_path / "ensemble")).network
    datamodule.setup("test")
    return ensemble, [load_pretrained(f).network for f in folders], next(iter(datamodule.test_dataloader()))


def test_a_classifier_ensemble_averages_the_class_probabilities(tmp_path):
    dm, build, _ = classification_case(tmp_path)
    folders = seeded_folders(build, dm, tmp_path, 2)
    ensemble, members, batch = ensemble_members_and_batch(folders, dm, tmp_path)
    inputs = (batch["input_ids"], batch["lengths"])
    expected = torch.stack([member(*inputs).softmax(-1) for member in members]).mean(0)
    torch.testing.assert_close(ensemble(*inputs).softmax(-1), expected)
    torch.testing.assert_close(ensemble(*inputs).exp(), expected)  # log-probabilities in place of logits


def test_a_tagger_ensemble_decodes_once_with_the_mean_emissions_and_transitions(tmp_path):
    dm, build, logits = tagging_case(tmp_path)
    folders = seeded_folders(build, dm, tmp_path, 2)
    ensemble, members, batch = ensemble_members_and_batch(folders, dm, tmp_path)
    emissions, mask = logits(ensemble, batch)
    torch.testing.assert_close(emissions, torch.stack([logits(m, batch)[0] for m in members]).mean(0))
    scores = [torch.stack(s).mean(0) for s in zip(*(m.crf.scores() for m in members), strict=True)]
    assert torch.equal(ensemble.decode(emissions, mask), viterbi(emissions, mask, *scores))
    assert not any(name.startswith("crf.") for name in ensemble.state_dict())  # the mean CRF owns no weights


def test_members_of_other_tasks_or_vocabularies_are_refused(tmp_path):
    dm, build, _ = classification_case(tmp_path / "a")
    tagging_dm, build_tagger, _ = tagging_case(tmp_path / "b")
    classifier = teacher_folder(build(), dm, tmp_path / "classifier")
    tagger = teacher_folder(build_tagger(), tagging_dm, tmp_path / "tagger")
    other_vocabulary = teacher_folder(build(), dm, tmp_path / "other", {"tokenizer": tagging_dm.tokenizer.to_str()})
    with pytest.raises(ValueError, match="holds a tagging model and .* a classification one"):
        write_ensemble([classifier, tagger], tmp_path / "e1")
    with pytest.raises(ValueError, match="another tokenizer vocabulary"):
        write_ensemble([classifier, other_vocabulary], tmp_path / "e2")
    ensemble = write_ensemble([classifier, classifier], tmp_path / "e3")
    with pytest.raises(ValueError, match="already an ensemble; list its members"):
        write_ensemble([classifier, str(ensemble)], tmp_path / "e4")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_checkpoint_averaging_means_the_weights_of_one_architecture(tmp_path):
    dm, build, _ = classification_case(tmp_path)
    folders = seeded_folders(build, dm, tmp_path, 3)
    averaged = load_pretrained(average_checkpoints(folders, tmp_path / "averaged")).network.state_dict()
    states = [load_pretrained(folder).network.state_dict() for folder in folders]
    for name, value in averaged.items():
        torch.testing.assert_close(value, torch.stack([state[name] for state in states]).mean(0))
    wider = teacher_folder(build(hidden_size=12), dm, tmp_path / "wider")
    with pytest.raises(ValueError, match="another architecture"):
        average_checkpoints([folders[0], wider], tmp_path / "refused")


def test_zoo_ensemble_and_average_commands(tmp_path):
    dm, build, _ = classification_case(tmp_path)
    folders = seeded_folders(build, dm, tmp_path, 2)
    made = rnnzoo(tmp_path, "zoo", "ensemble", *folders, "--out", str(tmp_path / "ensemble"), "--dtype", "float16")
    assert "(2 members)" in made.stdout
    assert load_pretrained(tmp_path / "ensemble").config.weights_dtype == "float16"
    predicted = rnnzoo(tmp_path, "zoo", "predict", str(tmp_path / "ensemble"), "--text", "It was good")
    expected = task_from_pretrained(tmp_path / "ensemble").classify(["It was good"])[0]
    assert json.loads(predicted.stdout)["label"] == expected["label"]
    averaged = rnnzoo(tmp_path, "zoo", "average", *folders, "--out", str(tmp_path / "averaged"))
    assert "the mean of 2" in averaged.stdout
    refused = rnnzoo(tmp_path, "zoo", "ensemble", folders[0], "nosuch-entry", "--out", "x", check=False)
    assert refused.returncode == 2 and "unknown zoo entry 'nosuch-entry'" in refused.stderr
