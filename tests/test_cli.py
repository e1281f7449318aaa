"""End-to-end: the `rnnzoo` command on the first rows of the real Penn Treebank."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from tests.conftest import PTB_CONFIG, QUICK, REPO, rnnzoo, shared_dataset
from zoo.storage.pretrained import load_pretrained


def global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def fit(cwd: Path, ptb_dir: Path, extra: str) -> None:
    rnnzoo(cwd, "fit", "--config", str(PTB_CONFIG), "--data.data_dir", str(ptb_dir), *QUICK, *extra.split())


def test_fit_test_resume_and_generate(tmp_path, ptb_dir):
    fit(tmp_path, ptb_dir, "--trainer.max_steps 12 --trainer.val_check_interval 6 --trainer.limit_val_batches 5")
    checkpoints = tmp_path / "checkpoints" / "ptb_lstm_small"
    assert global_step(checkpoints / "last.ckpt") == 12
    assert len(list(checkpoints.glob("epoch=*-val_ppl=*.ckpt"))) == 1

    tested = rnnzoo(
        tmp_path, "test", "--config", str(PTB_CONFIG), "--data.data_dir", str(ptb_dir), *QUICK, "--ckpt_path", "best"
    )
    assert "test_ppl" in tested.stdout and "best checkpoint:" in tested.stdout

    fit(tmp_path, ptb_dir, "--trainer.max_steps 20 --trainer.limit_val_batches 5 --ckpt_path last")
    assert global_step(checkpoints / "last.ckpt") == 20  # resumed at 12, not restarted

    prompt = ["--prompt", "the company"]
    sampled = rnnzoo(
        tmp_path,
        "generate",
        "--ckpt",
        str(checkpoints / "last.ckpt"),
        *prompt,
        *"--max_new_tokens 8 --top_k 10 --seed 0 --num_samples 2".split(),
    )
    records = [json.loads(line) for line in sampled.stdout.strip().splitlines()]
    assert len(records) == 2 and all(r["prompt"] == "the company" for r in records)
    assert all(r["continuation"].startswith("the company") for r in records)


def test_ddp_on_two_cpu_processes(tmp_path, ptb_dir):
    fit(
        tmp_path,
        ptb_dir,
        "--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp "
        "--trainer.max_steps 4 --trainer.limit_val_batches 3",
    )
    checkpoint = tmp_path / "checkpoints" / "ptb_lstm_small" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 and saved["tokenizer"]


def test_offline_without_data_dir_says_how_to_train_offline(tmp_path):
    result = rnnzoo(
        tmp_path,
        "fit",
        "--config",
        str(PTB_CONFIG),
        "--trainer.max_steps",
        "1",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode != 0
    assert "--data.data_dir" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_dir_is_a_clear_error(tmp_path):
    result = rnnzoo(
        tmp_path, "fit", "--config", str(PTB_CONFIG), "--data.data_dir", str(tmp_path / "nope"), check=False
    )
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_generate_needs_an_existing_checkpoint(tmp_path):
    result = rnnzoo(tmp_path, "generate", "--ckpt", str(tmp_path / "missing.ckpt"), check=False)
    assert result.returncode == 2 and "no checkpoint" in result.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--data.init_args.bptt", "0"], "bptt must be >= 1"),
        (["--model.init_args.cell", "mingru", "--model.init_args.recurrent_init", "orthogonal"], "no recurrent matrix"),
    ],
)
def test_bad_config_value_is_one_line(tmp_path, synthetic_corpus, arguments, message):
    data = ["--data.data_dir", str(synthetic_corpus)]
    result = rnnzoo(tmp_path, "fit", "--config", str(PTB_CONFIG), *data, *arguments, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and "invalid configuration" in result.stderr.strip().splitlines()[-1]


def test_imdb_fit_test_and_predict_raw_text(tmp_path):
    config = str(REPO / "zoo" / "configs" / "imdb_bilstm.yaml")
    common = ["--config", config, "--data.data_dir", str(shared_dataset("imdb")), "--data.max_samples", "300"]
    small = "--data.val_size 60 --model.init_args.hidden_size 16 --model.init_args.embedding_dim 16".split()
    rnnzoo(tmp_path, "fit", *common, *small, *"--trainer.max_steps 6 --trainer.enable_progress_bar false".split())
    last = str(tmp_path / "checkpoints" / "imdb_bilstm" / "last.ckpt")
    tested = rnnzoo(tmp_path, "test", *common, *small, "--ckpt_path", last)
    assert "test_acc" in tested.stdout and "test_macro_f1" in tested.stdout
    assert list(tmp_path.glob("runs/imdb_bilstm/*/confusion_matrix.png"))

    texts = '["A wonderful, moving film.", "Dull and far too long."]'
    predicted = rnnzoo(tmp_path, "predict", *common, *small, "--ckpt_path", last, "--data.predict_texts", texts)
    rows = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    assert [row["text"] for row in rows] == json.loads(texts)
    assert all(row["label"] in ("neg", "pos") and 0.5 <= row["probability"] <= 1 for row in rows)

    published = tmp_path / "imdb-tiny"
    publish = ["zoo", "publish", last, "--out", str(published), "--dtype", "float16", "--metric", "test_acc=0.5"]
    rnnzoo(tmp_path, *publish, "--command", "rnnzoo test ...", "--manifest", str(tmp_path / "manifest.json"))
    listed = rnnzoo(tmp_path, "zoo", "list", env={"RNNZOO_MANIFEST": str(tmp_path / "manifest.json")})
    assert "imdb-tiny" in listed.stdout and "test_acc 0.5" in listed.stdout
    files = {p.name for p in published.iterdir()}
    assert files == {"config.json", "model.safetensors", "tokenizer.json", "metrics.json", "entry.json"}
    entry = json.loads((published / "entry.json").read_text())
    assert entry["name"] == "imdb-tiny" and entry["task"] == "classification" and len(entry["files"]) == 4
    assert json.loads((published / "metrics.json").read_text())["metrics"] == {"test_acc": 0.5}
    from_folder = rnnzoo(tmp_path, "test", *common, *small, "--ckpt_path", str(published))
    assert "test_acc" in from_folder.stdout
    # A published folder stores again in another dtype, in place.
    rnnzoo(tmp_path, "zoo", "publish", str(published), "--out", str(published), "--dtype", "float32")
    assert json.loads((published / "config.json").read_text())["weights_dtype"] == "float32"
    assert json.loads((published / "entry.json").read_text())["name"] == "imdb-tiny"
    # A zoo entry on a data subset: the data takes the entry's vocabulary instead of fitting its own.
    from_entry = rnnzoo(tmp_path, "validate", *common, "--data.val_size", "60", "--ckpt_path", "imdb-bilstm")
    assert float(re.search(r"val_acc\s+([0-9.]+)", from_entry.stdout).group(1)) > 0.75
    missing = rnnzoo(tmp_path, "zoo", "publish", "nowhere.ckpt", "--out", "x", check=False)
    assert missing.returncode == 2 and "no checkpoint at nowhere.ckpt" in missing.stderr

    # Fine-tuning on other rows (whose own vocabulary would differ) starts from the published weights
    # and vocabulary with a fresh step count; lr 0 keeps the weights so they can be compared exactly.
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    other_rows = [*common[:-1], "150", *small, "--data.seed", "3", "--optimizer.init_args.lr", "0.0"]
    steps = "--trainer.max_steps 2 --trainer.enable_progress_bar false".split()
    fitted = rnnzoo(tuned, "fit", *other_rows, *steps, "--ckpt_path", str(published))
    assert "fine-tuning from" in fitted.stdout
    checkpoint = torch.load(tuned / "checkpoints" / "imdb_bilstm" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert (
        Tokenizer.from_str(checkpoint["tokenizer"]).get_vocab()
        == Tokenizer.from_file(str(published / "tokenizer.json")).get_vocab()
    )
    for name, tensor in load_pretrained(published).network.state_dict().items():
        torch.testing.assert_close(checkpoint["state_dict"][f"net.{name}"], tensor, rtol=0, atol=0)
    tagger = rnnzoo(tuned, "fit", *other_rows, *steps, "--ckpt_path", "conll-bilstm-crf", check=False)
    assert tagger.returncode != 0 and "holds a tagging model, the config trains a classification one" in tagger.stderr


def test_conll_fit_test_and_tag_raw_sentences(tmp_path):
    config = str(REPO / "zoo" / "configs" / "conll_bilstm_crf.yaml")
    common = ["--config", config, "--data.data_dir", str(shared_dataset("conll2003")), "--data.max_samples", "200"]
    small = "--model.init_args.hidden_size 16 --model.init_args.embedding_dim 16 --model.init_args.num_layers 1".split()
    rnnzoo(tmp_path, "fit", *common, *small, *"--trainer.max_steps 6 --trainer.enable_progress_bar false".split())
    last = str(tmp_path / "checkpoints" / "conll_bilstm_crf" / "last.ckpt")
    tested = rnnzoo(tmp_path, "test", *common, *small, "--ckpt_path", last)
    assert "test_f1" in tested.stdout and "test_token_acc" in tested.stdout

    sentences = '["EU rejects German call to boycott British lamb .", "Peter Blackburn"]'
    tagged = rnnzoo(tmp_path, "predict", *common, *small, "--ckpt_path", last, "--data.predict_sentences", sentences)
    rows = [json.loads(line) for line in tagged.stdout.splitlines() if line.startswith("{")]
    assert [len(row["tags"]) for row in rows] == [9, 2]
    assert all(
        tag in ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
        for r in rows
        for tag in r["tags"]
    )


def test_conll_ddp_gathers_every_sentence_for_seqeval(tmp_path):
    config = str(REPO / "zoo" / "configs" / "conll_bilstm_crf.yaml")
    args = ["--config", config, "--data.data_dir", str(shared_dataset("conll2003")), "--data.max_samples", "120"]
    args += "--model.init_args.hidden_size 8 --model.init_args.embedding_dim 8 --model.init_args.num_layers 1".split()
    args += "--trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp".split()
    args += "--trainer.enable_progress_bar false".split()
    rnnzoo(tmp_path, "fit", *args, "--trainer.max_steps", "3")
    tested = rnnzoo(
        tmp_path, "test", *args, "--ckpt_path", str(tmp_path / "checkpoints" / "conll_bilstm_crf" / "last.ckpt")
    )
    sentences = next(line for line in tested.stdout.splitlines() if "test_sentences" in line)
    assert "120" in sentences  # both ranks' sentences reach seqeval, none twice


def test_multi30k_fit_test_predict_and_translate(tmp_path):
    config = str(REPO / "zoo" / "configs" / "multi30k_bahdanau.yaml")
    common = ["--config", config, "--data.data_dir", str(shared_dataset("multi30k")), "--data.max_samples", "200"]
    small = "--model.init_args.hidden_size 16 --model.init_args.embedding_dim 16 --data.vocab_size 500".split()
    rnnzoo(tmp_path, "fit", *common, *small, *"--trainer.max_steps 4 --trainer.enable_progress_bar false".split())
    last = str(tmp_path / "checkpoints" / "multi30k_bahdanau" / "last.ckpt")
    tested = rnnzoo(tmp_path, "test", *common, *small, "--ckpt_path", last, "--model.init_args.beam_size", "2")
    assert "test_bleu" in tested.stdout and "test_chrf" in tested.stdout
    assert (
        "sacreBLEU signature: nrefs:1|case:mixed|eff:no|tok:13a" in tested.stdout and "200 sentences" in tested.stdout
    )

    texts = '["Ein Hund läuft im Schnee.", "Zwei Männer ☃ spielen Fußball."]'
    predicted = rnnzoo(tmp_path, "predict", *common, *small, "--ckpt_path", last, "--data.predict_texts", texts)
    rows = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    assert [row["source"] for row in rows] == json.loads(texts)
    assert all(isinstance(row["translation"], str) for row in rows)

    heatmap = tmp_path / "attention.png"
    translated = rnnzoo(
        tmp_path,
        "translate",
        "--ckpt",
        last,
        "--text",
        "Ein Hund.",
        "--beam_size",
        "3",
        "--attention_png",
        str(heatmap),
    )
    assert json.loads(translated.stdout.splitlines()[0])["source"] == "Ein Hund." and heatmap.stat().st_size > 0
    refused = rnnzoo(tmp_path, "translate", "--ckpt", last, "--text", "x", "--beam_size", "0", check=False)
    assert refused.returncode != 0 and "--beam_size must be >= 1" in refused.stderr
    reversed_pair = ["--data.source_lang", "en", "--data.target_lang", "de"]
    wrong = rnnzoo(tmp_path, "test", *common, *small, *reversed_pair, "--ckpt_path", last, check=False)
    assert wrong.returncode != 0 and "language_pair de-en, the data has en-de" in wrong.stderr


def test_forecasting_from_the_command_line_and_a_users_config_yaml_is_left_alone(tmp_path):
    ett = str(shared_dataset("ett"))
    config = str(REPO / "zoo" / "configs" / "etth1_dlinear_96.yaml")
    quick = ["--data.data_dir", ett, "--data.max_samples", "64", "--trainer.enable_progress_bar", "false"]
    users = tmp_path / "config.yaml"
    users.write_text("my: settings\n")
    rnnzoo(tmp_path, "fit", "--config", config, *quick, "--trainer.max_epochs", "1")
    assert (tmp_path / "runs" / "etth1_dlinear_96" / "version_0" / "config.yaml").is_file()
    quick += ["--trainer.logger", "false"]  # from here on
    tested = rnnzoo(tmp_path, "test", "--config", config, *quick, "--ckpt_path", "best")
    assert "test_mse" in tested.stdout and "test_mae" in tested.stdout
    assert users.read_text() == "my: settings\n"  # no logger, no run folder: nothing saved
    predicted = rnnzoo(tmp_path, "predict", "--config", config, *quick, "--ckpt_path", "best")
    records = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 64  # the test split's first 64 windows (max_samples), read raw
    assert records[0]["columns"][-1] == "OT" and np.shape(records[0]["forecast"]) == (96, 7)
    assert users.read_text() == "my: settings\n"
