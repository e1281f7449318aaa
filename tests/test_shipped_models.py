"""The zoo entries shipped inside the package: they load offline, predict what they should, export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deploy
from deploy.export import DEFAULT_TOLERANCE, export
from lightning_modules.pretrained import task_from_pretrained
from zoo.hub import load_manifest

SHIPPED = [
    "conll-bilstm-crf",
    "conll-bilstm-crf-distilled",
    "imdb-bigru-distilled",
    "imdb-bilstm",
    "imdb-lstm-lm",
    "multi30k-bahdanau",
    "ptb-char-cnn-lstm-small",
    "ptb-char-lstm",
    "ptb-lstm-small-tied",
]
CLASSIFIERS = ["imdb-bigru-distilled", "imdb-bilstm", "imdb-lstm-lm"]
TAGGERS = ["conll-bilstm-crf", "conll-bilstm-crf-distilled"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("RNNZOO_OFFLINE", "1")
    monkeypatch.delenv("RNNZOO_MANIFEST", raising=False)


def test_manifest_lists_the_shipped_entries_with_their_test_metrics():
    entries = load_manifest()
    assert set(SHIPPED) <= set(entries)
    for name in SHIPPED:
        assert entries[name]["metrics"] and entries[name]["command"] and entries[name]["local"]
        assert sum(f["size"] for f in entries[name]["files"].values()) < 15e6
    shipped_bytes = sum(f["size"] for entry in entries.values() if entry.get("local") for f in entry["files"].values())
    assert shipped_bytes < 60e6, "the entries inside the package stay under 60 MB together"


@pytest.mark.parametrize("name", SHIPPED)
def test_the_manifest_counts_the_networks_parameters(name):
    from zoo import from_pretrained

    network = from_pretrained(name).network  # int8 scales and buffers (a char CNN's word bytes) are not parameters
    assert load_manifest()[name]["parameters"] == sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_imdb_classifiers_classify_clear_reviews(name):
    task = task_from_pretrained(name)
    rows = task.classify(
        [
            "A wonderful, moving film with brilliant acting. I loved it.",
            "Dull, boring and far too long. A waste of time.",
        ]
    )
    assert [row["label"] for row in rows] == ["pos", "neg"]


@pytest.mark.parametrize("name", TAGGERS)
def test_conll_taggers_tag_the_classic_sentence(name):
    task = task_from_pretrained(name)
    (row,) = task.tag(["EU rejects German call to boycott British lamb ."])
    assert row["tags"] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]


def test_multi30k_bahdanau_translates_a_simple_sentence():
    task = task_from_pretrained("multi30k-bahdanau")
    (translation,) = task.translate(["Ein Hund rennt durch den Schnee."])
    assert "dog" in translation and "snow" in translation


def test_ptb_lstm_small_tied_continues_a_sentence_greedily():
    task = task_from_pretrained("ptb-lstm-small-tied")
    continuation = task.generate_text("the company said", 8, temperature=0.0)
    assert continuation == "the company said it will be able to sell the <unk>"


def test_ptb_char_lstm_spells_a_continuation_greedily():
    task = task_from_pretrained("ptb-char-lstm")
    assert task.hparams.level == "char"
    continuation = task.generate_text("the company said", 35, temperature=0.0)  # 35 characters
    assert continuation == "the company said it will sell $ N billion in assets"


REVIEWS = [
    "A wonderful, moving film with brilliant acting. I loved it.",
    "Dull, boring and far too long. A waste of time.",
    "Not bad, but the ending was a letdown.",
]
EXPORT_INPUTS = {
    "imdb-bilstm": REVIEWS,
    "imdb-bigru-distilled": REVIEWS,
    "imdb-lstm-lm": REVIEWS,
    "conll-bilstm-crf": ["EU rejects German call to boycott British lamb .", "Peter lives in Berlin ."],
    "conll-bilstm-crf-distilled": ["EU rejects German call to boycott British lamb .", "Peter lives in Berlin ."],
    "multi30k-bahdanau": ["Ein Hund rennt durch den Schnee.", "Zwei Männer spielen Fußball auf einer Wiese."],
    "ptb-lstm-small-tied": ["the company said", "stock prices"],
    "ptb-char-cnn-lstm-small": ["the company said", "stock prices"],
    "ptb-char-lstm": ["the company said", "stock prices"],
}


# A 1000-unit LSTM's states drift apart by ~2e-4 in float32 over the 48 random steps of the check
# (onnxruntime's LSTM op against torch's kernel); on real test rows their perplexities agree to 1e-7.
EXPORT_TOLERANCE = {"ptb-char-lstm": 5e-4}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_entry_exports_and_predicts_like_pytorch(tmp_path, name):
    """The exported folder, run by onnxruntime, answers as the PyTorch task does on the same inputs."""
    export(name, tmp_path / name, tolerance=EXPORT_TOLERANCE.get(name, DEFAULT_TOLERANCE))
    exported, task, texts = deploy.load(tmp_path / name, threads=1), task_from_pretrained(name), EXPORT_INPUTS[name]
    if name in CLASSIFIERS:
        got, want = exported.classify(texts), task.classify(texts)
        assert [row["label"] for row in got] == [row["label"] for row in want]
        probabilities = [[row["probability"] for row in rows] for rows in (got, want)]
        np.testing.assert_allclose(*probabilities, atol=2e-4)
    elif name in TAGGERS:
        assert [row["tags"] for row in exported.tag(texts)] == [row["tags"] for row in task.tag(texts)]
    elif name == "multi30k-bahdanau":
        assert exported.translate(texts) == task.translate(texts)
    else:
        continuations = [exported.generate(prompt, 8, 0.0) for prompt in texts]  # greedy
        assert continuations == [task.generate_text(prompt, 8, 0.0) for prompt in texts]


ONE_LINERS = {
    "imdb-bilstm": ("A wonderful, moving film with brilliant acting.", "label", "pos"),
    "imdb-bigru-distilled": ("A wonderful, moving film with brilliant acting.", "label", "pos"),
    "imdb-lstm-lm": ("A wonderful, moving film with brilliant acting.", "label", "pos"),
    "conll-bilstm-crf": ("Peter lives in Berlin .", "tags", ["B-PER", "O", "O", "B-LOC", "O"]),
    "conll-bilstm-crf-distilled": ("Peter lives in Berlin .", "tags", ["B-PER", "O", "O", "B-LOC", "O"]),
    "multi30k-bahdanau": ("Ein Hund rennt durch den Schnee.", "translation", "A dog runs through the snow."),
    "ptb-lstm-small-tied": ("the company said", "continuation", "the company said it will be able to sell the <unk>"),
    "ptb-char-cnn-lstm-small": ("the company said", "continuation", "the company said it will sell its <unk> <unk>"),
    "ptb-char-lstm": ("the company said", "continuation", "the company said it will sell $ N billion"),
}


@pytest.mark.parametrize("name", ONE_LINERS)
def test_one_line_cli_prediction_offline(name):
    text, field, expected = ONE_LINERS[name]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rnnzoo"), "zoo", "predict", name, "--text", text],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RNNZOO_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    prediction = json.loads(result.stdout.splitlines()[-1])[field]
    assert prediction.startswith(expected) if field == "continuation" else prediction == expected
