"""Ensemble pretrained folders (``zoo.networks.ensemble``) exported and run without torch like their PyTorch
ensembles."""

import json

import datasets
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

import deploy
from datamodules.tokenization import fit_char_tokenizer
from deploy.export import ExportError, export
from deploy.parity import task_parity
from tests.conftest import WORDS, translation_tokenizer, word_tokenizer
from zoo import Seq2Seq
from zoo.common.decoding import softmax
from zoo.common.formats import StateSpec
from zoo.networks.ensemble import ClassifierEnsemble, LanguageModelEnsemble, Seq2SeqEnsemble, TaggerEnsemble
from zoo.networks.seq2seq import translate_ids
from zoo.storage.pretrained import save_pretrained

TRANSLATION = {"beam_size": 5, "length_penalty": 1.0, "max_new_tokens": 12, "language_pair": "de-en"}
TRANSLATION_TOKENIZERS = {"source_tokenizer": translation_tokenizer(), "target_tokenizer": translation_tokenizer()}
SEQ2SEQ = {"source_vocab_size": 24, "target_vocab_size": 24, "embedding_dim": 8, "hidden_size": 8}
BAHDANAU_GRU = SEQ2SEQ | {"context": "attention", "attention": "bahdanau", "cell": "gru"}
LUONG_FEEDING_LSTM = SEQ2SEQ | {"context": "attention", "attention": "general", "input_feeding": True, "cell": "lstm"}
TEXTS = ["w1 w2 w3 w4 w5", "w7", "w2 w2 w9 w11 w0 w3 w8 w8"]


def new_ensemble(ensemble_class, arguments: list[dict]):
    """An ensemble of new (randomly initialised) members built from ``arguments``."""
    return ensemble_class.from_networks([ensemble_class.architecture(**member) for member in arguments], arguments)


def sharpen(network: torch.nn.Module) -> torch.nn.Module:
    """Weights drawn wider than a new network's, so that tiny translators write varied sentences and
    the members of an ensemble disagree (at their initialisation all repeat one word)."""
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 1)
    return network


def save_ensemble(path, ensemble, arguments: list[dict], task_arguments: dict, tokenizers: dict):
    return save_pretrained(
        path, ensemble, arguments={"members": arguments}, task_arguments=task_arguments, tokenizers=tokenizers
    )


def test_classifier_ensemble_exports_one_graph_that_classifies_like_torch(tmp_path):
    torch.manual_seed(0)
    base = {"vocab_size": 23, "num_classes": 3, "embedding_dim": 8}
    members = [
        base | {"hidden_size": 6, "cell": "lstm", "pooling": "mean", "bidirectional": True},
        base | {"hidden_size": 5, "cell": "gru", "pooling": "attention", "num_layers": 2},
    ]
    labels = ["a", "b", "c"]
    ensemble = new_ensemble(ClassifierEnsemble, members)
    folder = save_ensemble(tmp_path / "clf", ensemble, members, {"labels": labels}, {"tokenizer": word_tokenizer()})
    config = export(folder, tmp_path / "onnx")
    assert set(config.graphs) == {"model.onnx"} and config.members is None  # a single model's interface
    assert config.architecture == "ClassifierEnsemble"

    predictor = deploy.load(tmp_path / "onnx")
    texts = ["w1 w2 w3 w4 w5 w6 w7", "w3", "w9 w9 w0 nonsense"]
    ids, lengths = predictor.encode(texts)
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(ids), torch.from_numpy(lengths)).exp().numpy()
    np.testing.assert_allclose(softmax(predictor.logits(texts)), expected, atol=1e-5)
    rows = predictor.classify(texts)
    assert [row["label"] for row in rows] == [labels[i] for i in expected.argmax(-1)]
    np.testing.assert_allclose([list(row["probabilities"].values()) for row in rows], expected, atol=6e-5)  # rounded


def test_tagger_ensemble_exports_the_mean_crf_viterbi_and_tags_like_torch(tmp_path):
    torch.manual_seed(0)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    char_tokenizer = fit_char_tokenizer(WORDS, ["<pad>", "<unk>"])
    base = {"vocab_size": 23, "labels": labels, "embedding_dim": 8, "char_vocab_size": char_tokenizer.get_vocab_size()}
    members = [
        base | {"hidden_size": 6, "char_embedding_dim": 4, "char_hidden_size": 3},
        base | {"hidden_size": 4, "num_layers": 1, "cell": "gru", "char_embedding_dim": 3, "char_hidden_size": 5},
    ]
    tokenizers = {"tokenizer": word_tokenizer(), "char_tokenizer": char_tokenizer.to_str()}
    ensemble = new_ensemble(TaggerEnsemble, members)
    with torch.no_grad():  # strong transitions, so that the CRF's decisions differ from per-token argmax
        for member in ensemble.members:
            member.crf.transitions.normal_(0, 3)
    folder = save_ensemble(tmp_path / "tagger", ensemble, members, {"labels": labels}, tokenizers)
    config = export(folder, tmp_path / "onnx")
    assert set(config.graphs) == {"model.onnx"}

    predictor = deploy.load(tmp_path / "onnx")
    sentences = ["w1 w2 w3 w4 w5 w6 w7 w8 w9", "w3", "w9 w13 Zürich w0"]
    words, feed = predictor.features(sentences)
    inputs = {name: torch.from_numpy(value) for name, value in feed.items()}
    with torch.no_grad():
        emissions = ensemble(inputs["tokens"], inputs["lengths"], inputs["chars"], inputs["char_lengths"])
        mask = torch.arange(emissions.size(1)).unsqueeze(0) < inputs["lengths"].unsqueeze(1)
        expected = ensemble.decode(emissions, mask)
    tagged = predictor.tag(sentences)
    assert [row["tags"] for row in tagged] == [[labels[t] for t in expected[i, : len(w)]] for i, w in enumerate(words)]


@pytest.fixture(scope="module")
def translator_ensemble(tmp_path_factory):
    """A Bahdanau GRU and a Luong LSTM with input feeding, exported as one ensemble."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("translator-ensemble")
    members = [BAHDANAU_GRU, LUONG_FEEDING_LSTM]
    ensemble = sharpen(new_ensemble(Seq2SeqEnsemble, members))
    folder = save_ensemble(root / "s2s", ensemble, members, TRANSLATION, TRANSLATION_TOKENIZERS)
    return export(folder, root / "onnx"), root / "onnx", ensemble


def test_translator_ensemble_exports_each_member_and_translates_like_torch(translator_ensemble):
    config, exported, ensemble = translator_ensemble
    assert set(config.graphs) == {f"member{i}.{graph}.onnx" for i in (0, 1) for graph in ("encoder", "decoder")}
    assert config.state == StateSpec() and config.memory == []
    assert [member.state.inputs for member in config.members] == [["h"], ["h", "c", "feed"]]
    assert config.members[1].to_json() == {
        "encoder": "member1.encoder.onnx",
        "decoder": "member1.decoder.onnx",
        "state": {"inputs": ["h", "c", "feed"], "outputs": ["h_out", "c_out", "feed_out"]},
        "memory": ["memory", "memory_mask", "keys"],
    }

    predictor = deploy.load(exported)
    source, lengths = predictor.encode_sources(TEXTS)
    tokenizer = Tokenizer.from_str(translation_tokenizer())
    for beam in (1, 5):
        expected = translate_ids(ensemble, torch.from_numpy(source), torch.from_numpy(lengths), 2, 3, beam, 12)
        assert predictor.translate(TEXTS, beam_size=beam) == tokenizer.decode_batch(expected)
    # Both members attend: the weights are the mean of theirs, as in torch.
    steps = []
    (expected,) = translate_ids(
        ensemble, torch.from_numpy(source[:1]), torch.from_numpy(lengths[:1]), 2, 3, 1, 12, 1.0, steps
    )
    (result,) = predictor.translate(TEXTS[:1], beam_size=1, attention=True)
    assert result["translation"] == tokenizer.decode(expected)
    weights = np.array(result["attention"])
    np.testing.assert_allclose(weights, np.stack([step[0] for step in steps])[: len(weights), : lengths[0]], atol=1e-4)


def test_translator_ensemble_parity_decodes_the_torch_ensemble(translator_ensemble):
    pytest.importorskip("sacrebleu")
    _, exported, ensemble = translator_ensemble
    rows = datasets.Dataset.from_dict({"de": TEXTS, "en": ["w1 w2", "w7", "w3 w4"]})
    parity = task_parity(exported, ensemble, rows)
    assert parity["same_translation"] == 1.0 and parity["onnx_bleu"] == parity["torch_bleu"]


def test_an_ensemble_of_one_network_repeated_translates_like_that_network(tmp_path):
    torch.manual_seed(0)
    network = sharpen(Seq2Seq(**BAHDANAU_GRU).eval())
    single = save_pretrained(
        tmp_path / "single",
        network,
        arguments=BAHDANAU_GRU,
        task_arguments=TRANSLATION,
        tokenizers=TRANSLATION_TOKENIZERS,
    )
    config = export(single, tmp_path / "single-onnx")
    assert set(config.graphs) == {"encoder.onnx", "decoder.onnx"} and config.members is None
    members = [BAHDANAU_GRU, BAHDANAU_GRU]
    ensemble = Seq2SeqEnsemble.from_networks([network, network], members)
    twice = save_ensemble(tmp_path / "twice", ensemble, members, TRANSLATION, TRANSLATION_TOKENIZERS)
    export(twice, tmp_path / "twice-onnx")
    alone, repeated = deploy.load(tmp_path / "single-onnx"), deploy.load(tmp_path / "twice-onnx")
    for beam in (1, 5):
        assert repeated.translate(TEXTS, beam_size=beam) == alone.translate(TEXTS, beam_size=beam)
    assert repeated.translate(TEXTS, attention=True) == alone.translate(TEXTS, attention=True)

    config_file = tmp_path / "twice-onnx" / "config.json"
    config = json.loads(config_file.read_text())
    config["members"][1]["decoder"] = "../single-onnx/decoder.onnx"  # a file outside the folder
    config["graphs"]["../single-onnx/decoder.onnx"] = config["graphs"].pop("member1.decoder.onnx")
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a plain file name"):
        deploy.load(tmp_path / "twice-onnx")
    config["members"] = [{"encoder": "member0.encoder.onnx"}]
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="malformed members; export the model again"):
        deploy.load(tmp_path / "twice-onnx")


def test_an_ensemble_whose_members_do_not_all_attend_returns_no_attention(tmp_path):
    every_step = SEQ2SEQ | {"context": "every_step", "cell": "gru", "bidirectional_encoder": False}
    members = [BAHDANAU_GRU, every_step]
    folder = save_ensemble(
        tmp_path / "s2s", new_ensemble(Seq2SeqEnsemble, members), members, TRANSLATION, TRANSLATION_TOKENIZERS
    )
    export(folder, tmp_path / "onnx")
    predictor = deploy.load(tmp_path / "onnx")
    assert len(predictor.translate(TEXTS, beam_size=2)) == len(TEXTS)
    with pytest.raises(ValueError, match="no attention weights to return: not every member's decoder reads attention"):
        predictor.translate(TEXTS, attention=True)


def test_a_language_model_ensemble_is_refused_with_a_message(tmp_path):
    members = [{"vocab_size": 23, "embedding_dim": 8, "hidden_size": size} for size in (8, 6)]
    ensemble = new_ensemble(LanguageModelEnsemble, members)
    folder = save_ensemble(tmp_path / "lm", ensemble, members, {}, {"tokenizer": word_tokenizer()})
    with pytest.raises(ExportError, match="a language-model ensemble is not exported .* export its members one by one"):
        export(folder, tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]  # nothing written
