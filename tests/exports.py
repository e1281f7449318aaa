"""Tiny exported models (sentiment, translator, tagger with characters, lm, forecaster) for the service tests.

``python -m tests.exports DIR`` writes them into DIR (this needs torch); with ``RNNZOO_TEST_EXPORTS=DIR``
the service tests use those folders and run without torch, as the service does.
"""

import os
import sys
from pathlib import Path

import pytest

NAMES = ("sentiment", "translator", "tagger", "lm", "forecaster")
# The forecaster's window: 8 rows of 2 columns in, 4 rows out.
FORECASTER = {"input_length": 8, "horizon": 4, "columns": ["load", "OT"], "mean": [5.0, 30.0], "std": [2.0, 4.0]}


def export_fixtures(root: Path) -> dict[str, Path]:
    """Export the tiny models into ``root``; folders already there are kept."""
    import torch

    from datamodules.tokenization import fit_char_tokenizer
    from deploy.export import export
    from tests.conftest import WORDS, pretrained_folder, translation_tokenizer, word_tokenizer
    from zoo import RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
    from zoo.networks.forecaster import Forecaster
    from zoo.storage.pretrained import save_pretrained

    root = Path(root)
    folders = {name: root / name for name in NAMES}
    if all((folder / "config.json").is_file() for folder in folders.values()):
        return folders
    sources = root / "sources"
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 8, "hidden_size": 8, "pooling": "max"}
    network = SequenceClassifier(**arguments)
    export(pretrained_folder(sources / "clf", network, arguments, {"labels": ["neg", "pos"]}), folders["sentiment"])

    arguments = {"source_vocab_size": 24, "target_vocab_size": 24, "embedding_dim": 8, "hidden_size": 8}
    arguments |= {"context": "attention", "attention": "bahdanau"}
    folder = save_pretrained(
        sources / "s2s",
        Seq2Seq(**arguments),
        arguments=arguments,
        task_arguments={"beam_size": 2, "max_new_tokens": 8},
        tokenizers={"source_tokenizer": translation_tokenizer(), "target_tokenizer": translation_tokenizer()},
    )
    export(folder, folders["translator"])

    char_tokenizer = fit_char_tokenizer(WORDS, ["<pad>", "<unk>"])
    arguments = {"vocab_size": 23, "labels": ["O", "B-X", "I-X"], "embedding_dim": 8, "hidden_size": 8}
    arguments |= {"char_vocab_size": char_tokenizer.get_vocab_size(), "char_embedding_dim": 4, "char_hidden_size": 3}
    folder = save_pretrained(
        sources / "tag",
        SequenceTagger(**arguments),
        arguments=arguments,
        task_arguments={"labels": arguments["labels"]},
        tokenizers={"tokenizer": word_tokenizer(), "char_tokenizer": char_tokenizer.to_str()},
    )
    export(folder, folders["tagger"])

    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8}
    export(pretrained_folder(sources / "lm", RNNLanguageModel(**arguments), arguments), folders["lm"])

    sizes = {key: FORECASTER[key] for key in ("input_length", "horizon", "mean", "std")}
    arguments = {**sizes, "channels": 2, "hidden_size": 4, "segment_length": 4}
    folder = save_pretrained(
        sources / "forecast", Forecaster(**arguments), arguments=arguments, task_arguments=FORECASTER, tokenizers={}
    )
    export(folder, folders["forecaster"])
    return folders


def exported_models(tmp_path_factory) -> dict[str, Path]:
    """The exported folders by name, for a fixture: ``RNNZOO_TEST_EXPORTS`` if set, else exported
    once per test session (into pytest's base temporary folder)."""
    given = os.environ.get("RNNZOO_TEST_EXPORTS")
    if not given:
        return export_fixtures(tmp_path_factory.getbasetemp() / "service-exports")
    folders = {name: Path(given) / name for name in NAMES}
    missing = [name for name, folder in folders.items() if not (folder / "config.json").is_file()]
    if missing:
        pytest.fail(f"RNNZOO_TEST_EXPORTS={given} has no {missing}; write them with `python -m tests.exports {given}`")
    return folders


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.exports DIR")
    for name, folder in export_fixtures(Path(sys.argv[1])).items():
        print(f"{name}: {folder}")
