"""Every entry point treats the same input the same way: `rnnzoo predict`, `rnnzoo zoo predict`, `rnnzoo
translate`/`generate`, the task's ``predict`` in Python, the onnxruntime predictor's and HTTP's ``/v1`` give the
same ids and the same records (``zoo.common.predict``) for the shipped entries, over-long inputs included."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

import deploy
from deploy.export import export
from deploy.service import create_app
from lightning_modules.cli import main as rnnzoo
from lightning_modules.task_io import task_from_pretrained
from tests.conftest import REPO, shared_dataset
from zoo.common import text
from zoo.common.predict.language_model import GenerationOptions

LONG_REVIEW = " ".join(["a fine film , but far too long ."] * 80)  # 720 tokens: over imdb-bilstm's 400
LONG_SENTENCE = " ".join(["Peter", "lives", "in", "Berlin", "."] * 50)  # 250 words: over CoNLL's max_length 200
LONG_GERMAN = " ".join(["Ein Mann geht mit seinem Hund durch den Park ."] * 12)  # 120 source tokens
LONG_PROMPT = " ".join(["the company said it will sell its stake"] * 40)  # 320 tokens: over the prompt chunk

INPUTS = {
    "imdb-bilstm": ["A wonderful, moving film. I loved it.", "Dull and boring.", LONG_REVIEW],
    "conll-bilstm-crf": ["EU rejects German call to boycott British lamb .", LONG_SENTENCE],
    "multi30k-bahdanau": ["Ein Hund rennt durch den Schnee.", LONG_GERMAN],
    "ptb-lstm-small-tied": ["the company said", "", LONG_PROMPT],
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNZOO_OFFLINE", "1")
    monkeypatch.delenv("RNNZOO_MANIFEST", raising=False)
    monkeypatch.chdir(tmp_path)  # where `rnnzoo predict` writes its logs


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exports")
    for name in INPUTS:
        export(name, root / name)
    return {name: root / name for name in INPUTS}


@pytest.fixture(scope="module")
def http(exported):
    with TestClient(create_app(list(exported.values()), threads=1)) as client:
        yield client


def cli_lines(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    try:
        rnnzoo(list(args))
    except SystemExit as err:  # argparse commands exit 0 when done
        assert not err.code, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def lightning_predict(capsys, config: str, data: str, entry: str, option: str, inputs: list[str], *more) -> list[dict]:
    arguments = [
        "--config",
        str(REPO / "zoo" / "configs" / config),
        "--data.data_dir",
        str(shared_dataset(data)),
        *more,
    ]
    arguments += ["--data.max_samples", "60", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    return cli_lines(capsys, "predict", *arguments, "--ckpt_path", entry, f"--data.{option}", json.dumps(inputs))


def test_classification_is_the_same_everywhere(capsys, exported, http):
    texts = INPUTS["imdb-bilstm"]
    task, onnx = task_from_pretrained("imdb-bilstm"), deploy.load(exported["imdb-bilstm"], threads=1)
    ids, lengths = onnx.encode(texts)
    assert lengths[-1] == task.tokenizer.truncation["max_length"] == 400  # the long review is truncated alike
    answers = {
        "rnnzoo predict": lightning_predict(
            capsys, "imdb_bilstm.yaml", "imdb", "imdb-bilstm", "predict_texts", texts, "--data.val_size", "10"
        ),
        "rnnzoo zoo predict": cli_lines(capsys, "zoo", "predict", "imdb-bilstm", *(f"--text={t}" for t in texts)),
        "task": task.predict(texts),
        "task.classify": task.classify(texts),
        "onnxruntime": onnx.predict(texts),
        "http": http.post("/v1/models/imdb-bilstm/predict", json={"texts": texts}).json()["predictions"],
    }
    for where, rows in answers.items():
        assert [set(row) for row in rows] == [{"text", "label", "probability", "probabilities"}] * 3, where
        assert [row["text"] for row in rows] == texts, where
        assert [row["label"] for row in rows] == [row["label"] for row in answers["task"]], where
        np.testing.assert_allclose(
            [row["probability"] for row in rows], [row["probability"] for row in answers["task"]], atol=2e-4
        )


def test_tagging_is_the_same_everywhere(capsys, exported, http):
    sentences = INPUTS["conll-bilstm-crf"]
    task, onnx = task_from_pretrained("conll-bilstm-crf"), deploy.load(exported["conll-bilstm-crf"], threads=1)
    answers = {
        "rnnzoo predict": lightning_predict(
            capsys, "conll_bilstm_crf.yaml", "conll2003", "conll-bilstm-crf", "predict_sentences", sentences
        ),
        "rnnzoo zoo predict": cli_lines(
            capsys, "zoo", "predict", "conll-bilstm-crf", *(f"--text={t}" for t in sentences)
        ),
        "task": task.predict(sentences),
        "task.tag": task.tag(sentences),
        "onnxruntime": onnx.predict(sentences),
        "http": http.post("/v1/models/conll-bilstm-crf/predict", json={"sentences": sentences}).json()["predictions"],
    }
    assert [len(row["tags"]) for row in answers["task"]] == [9, 250]  # every word is tagged
    for where, rows in answers.items():
        assert rows == answers["task"], where


def test_translation_is_the_same_everywhere(capsys, exported, http):
    texts = INPUTS["multi30k-bahdanau"]
    task, onnx = task_from_pretrained("multi30k-bahdanau"), deploy.load(exported["multi30k-bahdanau"], threads=1)
    source, lengths = task.encode_sources(texts)
    onnx_source, onnx_lengths = onnx.encode_sources(texts)
    np.testing.assert_array_equal(source.numpy(), onnx_source)
    assert lengths.tolist() == onnx_lengths.tolist() and lengths[-1] > 100
    flags = [f"--text={t}" for t in texts]
    response = http.post("/v1/models/multi30k-bahdanau/predict", json={"texts": texts}).json()
    answers = {
        "rnnzoo predict": lightning_predict(
            capsys, "multi30k_bahdanau.yaml", "multi30k", "multi30k-bahdanau", "predict_texts", texts
        ),
        "rnnzoo translate": cli_lines(capsys, "translate", "--ckpt", "multi30k-bahdanau", *flags),
        "rnnzoo zoo predict": cli_lines(capsys, "zoo", "predict", "multi30k-bahdanau", *flags),
        "task": task.predict(texts),
        "onnxruntime": onnx.predict(texts),
        "http": response["predictions"],
    }
    assert [set(row) for row in answers["task"]] == [{"source", "translation"}] * 2
    for where, records in answers.items():
        assert records == answers["task"], where
    translations = [row["translation"] for row in answers["task"]]
    assert task.translate(texts) == onnx.translate(texts) == response["translations"] == translations  # the text alone


def test_generation_is_the_same_everywhere(capsys, exported, http):
    task, onnx = task_from_pretrained("ptb-lstm-small-tied"), deploy.load(exported["ptb-lstm-small-tied"], threads=1)
    assert len(text.prompt_ids(task.tokenizer, LONG_PROMPT)) > 256
    for temperature, seed in ((0.0, None), (1.0, 3)):
        settings = {"max_new_tokens": 12, "temperature": temperature, "top_k": 50, "seed": seed}
        flags = ["--max_new_tokens", "12", "--temperature", str(temperature), "--top_k", "50"]
        flags += ["--seed", str(seed)] if seed else []
        for prompt in INPUTS["ptb-lstm-small-tied"]:
            (expected,) = task.predict([prompt], GenerationOptions(**settings))
            assert set(expected) == {"prompt", "continuation"} and expected["prompt"] == prompt
            request = {"prompts": [prompt], **{k: v for k, v in settings.items() if v is not None}}
            response = http.post("/v1/models/ptb-lstm-small-tied/predict", json=request).json()
            answers = {
                "rnnzoo generate": cli_lines(
                    capsys, "generate", "--ckpt", "ptb-lstm-small-tied", f"--prompt={prompt}", *flags
                ),
                "rnnzoo zoo predict": cli_lines(
                    capsys, "zoo", "predict", "ptb-lstm-small-tied", f"--text={prompt}", *flags
                ),
                "onnxruntime": onnx.predict([prompt], GenerationOptions(**settings)),
                "http": response["predictions"],
            }
            for where, records in answers.items():
                assert records == [expected], where
            continuation = expected["continuation"]
            assert task.generate(prompt, **settings) == onnx.generate(prompt, **settings) == continuation
            assert response["generations"] == [continuation]


def test_old_names_still_work_and_say_they_are_deprecated(capsys):
    task = task_from_pretrained("ptb-lstm-small-tied")
    with pytest.warns(DeprecationWarning, match="use generate"):
        old = task.generate_text("the company", 4, temperature=0.0)
    assert old == task.generate("the company", 4, temperature=0.0)
    capsys.readouterr()
    rnnzoo(
        ["generate", "--ckpt", "ptb-lstm-small-tied", "--prompt=the company", "--max_tokens", "4", "--temperature", "0"]
    )
    out, err = capsys.readouterr()
    assert json.loads(out) == {"prompt": "the company", "continuation": old}
    assert "--max_tokens is deprecated: use --max_new_tokens" in err
