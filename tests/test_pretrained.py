import json

import pytest
import torch
from safetensors import safe_open

from tests.conftest import tokenizer_json
from zoo import RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from zoo.storage.pretrained import WEIGHTS_FILE, load_pretrained, save_pretrained

TINY = {
    RNNLanguageModel: {"vocab_size": 20, "embedding_dim": 8, "hidden_size": 8, "tie_weights": True},
    SequenceClassifier: {"vocab_size": 20, "num_classes": 3, "embedding_dim": 8, "hidden_size": 6, "pooling": "max"},
    SequenceTagger: {"vocab_size": 20, "labels": ["O", "B-X", "I-X"], "embedding_dim": 8, "hidden_size": 6,
                     "char_vocab_size": 10, "char_embedding_dim": 4, "char_hidden_size": 3},
    Seq2Seq: {"source_vocab_size": 20, "target_vocab_size": 18, "embedding_dim": 8, "hidden_size": 6,
              "context": "attention", "attention": "bahdanau", "tie_weights": True},
}  # fmt: skip


def save(directory, network, arguments, **options):
    return save_pretrained(
        directory,
        network,
        arguments=arguments,
        task_arguments={"lr": 1},
        tokenizers={"tokenizer": tokenizer_json()},
        **options,
    )


@pytest.mark.parametrize("architecture", TINY, ids=lambda cls: cls.__name__)
def test_round_trip_restores_every_weight(tmp_path, architecture):
    torch.manual_seed(0)
    network = architecture(**TINY[architecture])
    folder = save(tmp_path / "model", network, TINY[architecture], metrics={"test_acc": 0.5})
    loaded = load_pretrained(folder)
    assert type(loaded.network) is architecture and not loaded.network.training
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[name], tensor, rtol=0, atol=0)
    assert loaded.tokenizers["tokenizer"].token_to_id("a") == 1
    assert loaded.metrics == {"test_acc": 0.5} and loaded.config.task_arguments == {"lr": 1}


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    arguments = TINY[RNNLanguageModel]
    folder = save(tmp_path / "lm", RNNLanguageModel(**arguments), arguments)
    with safe_open(folder / WEIGHTS_FILE, "pt") as weights:
        stored = set(weights.keys())
    tied = json.loads((folder / "config.json").read_text())["tied_weights"]
    assert tied and not set(tied) & stored
    network = load_pretrained(folder).network
    tied_name, stored_name = next(iter(tied.items()))
    assert network.get_parameter(tied_name) is network.get_parameter(stored_name)


def test_half_precision_storage_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    arguments = {**TINY[SequenceClassifier], "vocab_size": 2000}  # weights outweigh the header
    network = SequenceClassifier(**arguments)
    full = save(tmp_path / "fp32", network, arguments)
    half = save(tmp_path / "fp16", network, arguments, dtype=torch.float16)
    assert (half / WEIGHTS_FILE).stat().st_size < 0.6 * (full / WEIGHTS_FILE).stat().st_size
    loaded = load_pretrained(half).network
    for name, tensor in network.state_dict().items():
        assert loaded.state_dict()[name].dtype == tensor.dtype
        torch.testing.assert_close(loaded.state_dict()[name], tensor.half().to(tensor.dtype), rtol=0, atol=0)


def test_int8_storage_quantizes_vocabulary_matrices_per_row_and_keeps_ties(tmp_path):
    torch.manual_seed(0)
    arguments = {**TINY[RNNLanguageModel], "vocab_size": 8192, "embedding_dim": 128, "hidden_size": 128}
    network = RNNLanguageModel(**arguments)  # the tied 8192 x 128 embedding has 2**20 values
    half = save(tmp_path / "fp16", network, arguments, dtype=torch.float16)
    int8 = save(tmp_path / "int8", network, arguments, dtype=torch.int8)
    saved = (half / WEIGHTS_FILE).stat().st_size - (int8 / WEIGHTS_FILE).stat().st_size
    assert saved > 0.98 * 2**20  # one byte per embedding value instead of two (plus a scale per row)
    (quantized,) = json.loads((int8 / "config.json").read_text())["int8_rows"]
    loaded = load_pretrained(int8).network
    for name, tensor in network.state_dict().items():
        restored = loaded.state_dict()[name]
        if name == quantized:
            row_max = tensor.abs().amax(dim=1, keepdim=True)
            assert ((restored - tensor).abs() <= row_max / 127).all()  # within one int8 step of its row
            assert not torch.equal(restored, tensor.half().float())
        elif name not in json.loads((int8 / "config.json").read_text())["tied_weights"]:
            torch.testing.assert_close(restored, tensor.half().to(tensor.dtype), rtol=0, atol=0)
    assert loaded.output.weight is loaded.embedding.weight


def test_failed_save_leaves_the_previous_folder_untouched(tmp_path):
    arguments = TINY[SequenceClassifier]
    folder = save(tmp_path / "model", SequenceClassifier(**arguments), arguments)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TypeError, match="not JSON serializable"):
        save(folder, SequenceClassifier(**arguments), {**arguments, "callback": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging folder left behind
    assert load_pretrained(folder).config.arguments == arguments


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a pretrained folder"):
        load_pretrained(tmp_path)
    arguments = TINY[SequenceClassifier]
    folder = save(tmp_path / "model", SequenceClassifier(**arguments), arguments)
    (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read the weights"):
        load_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        load_pretrained(folder)
