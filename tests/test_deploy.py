import json
import subprocess
import sys

import datasets
import numpy as np
import onnx
import pytest
import torch
from tokenizers import Tokenizer

import deploy
from datamodules.tokenization import fit_char_tokenizer
from deploy.export import ExportError, export, verify
from deploy.graphs import classifier_graphs
from tests.conftest import REPO, WORDS, pretrained_folder, translation_tokenizer, word_tokenizer
from zoo import RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger, generate
from zoo.common.formats import StateSpec
from zoo.networks.seq2seq import translate_ids
from zoo.storage.hub import ZooError
from zoo.storage.pretrained import save_pretrained

ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_language_model_exports_a_fused_op_and_generates_like_torch(tmp_path, cell):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8, "num_layers": 2, "cell": cell}
    network = RNNLanguageModel(**arguments).eval()
    config = export(pretrained_folder(tmp_path / "lm", network, arguments), tmp_path / "onnx")
    graph_ops = ops(tmp_path / "onnx" / "model.onnx")
    assert ONNX_OP[cell] in graph_ops and "Loop" not in graph_ops
    names = ["h", "c"] if cell == "lstm" else ["h"]
    assert config.state == StateSpec(inputs=names, outputs=[f"{n}_out" for n in names], shape=[2, "batch", 8])

    predictor = deploy.load(tmp_path / "onnx")
    # fresh tokens from a non-zero state: onnxruntime's logits and carried state are the network's
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 23, (3, 11), generator=generator)
    initial = [torch.randn(2, 3, 8, generator=generator) for _ in names]
    with torch.no_grad():
        logits, final = network(tokens, tuple(initial) if cell == "lstm" else initial[0])
    feed = {name: value.numpy() for name, value in zip(names, initial, strict=True)}
    onnx_logits, onnx_state = predictor.step(tokens.numpy(), feed)
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-5)
    final = final if cell == "lstm" else (final,)
    assert list(onnx_state) == names
    for name, value in zip(names, final, strict=True):
        np.testing.assert_allclose(onnx_state[name], value.numpy(), atol=1e-5)
    prompt = "w1 w2 w3"
    tokenizer = Tokenizer.from_str(word_tokenizer())
    prompt_ids = [2] + tokenizer.encode(prompt).ids
    expected = generate(network, prompt_ids, max_new_tokens=12, temperature=0, eos_id=2)
    assert predictor.generate(prompt, max_new_tokens=12, temperature=0) == tokenizer.decode(prompt_ids[1:] + expected)
    sampled = predictor.generate(prompt, max_new_tokens=5, temperature=1.0, top_k=3, seed=0)
    assert sampled.startswith(prompt) and sampled == predictor.generate(prompt, 5, 1.0, 3, seed=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["last", "max", "mean", "attention", "concat"])
def test_bidirectional_classifier_matches_torch_on_variable_lengths(tmp_path, cell, pooling):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 3, "embedding_dim": 8, "hidden_size": 6, "num_layers": 2}
    arguments |= {"cell": cell, "pooling": pooling, "bidirectional": True}
    network = SequenceClassifier(**arguments).eval()
    labels = ["a", "b", "c"]
    export(pretrained_folder(tmp_path / "clf", network, arguments, {"labels": labels}), tmp_path / "onnx")
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    recurrences = [node for node in graph.node if node.op_type == ONNX_OP[cell]]
    assert len(recurrences) == 2 and all(node.input[4] for node in recurrences)  # sequence_lens is wired

    texts = ["w1 w2 w3 w4 w5 w6 w7", "w3", "w9 w9 w0 nonsense"]  # unknown words become <unk>
    predictor = deploy.load(tmp_path / "onnx", threads=1)
    expected = check_classifier_parity(predictor, network, texts)
    rows = predictor.classify(texts)
    assert [row["label"] for row in rows] == [labels[i] for i in expected.argmax(-1)]
    with pytest.raises(ValueError, match="empty"):
        predictor.classify(["w1", ""])


def check_classifier_parity(predictor, network, texts: list[str]) -> np.ndarray:
    """The exported classifier's logits equal the network's on a padded batch and on each text alone."""
    ids, lengths = predictor.encode(texts)
    with torch.no_grad():
        expected = network(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(predictor.logits(texts), expected, atol=1e-5)
    alone = np.concatenate([predictor.logits([text]) for text in texts])  # padding never changes a result
    np.testing.assert_allclose(alone, expected, atol=1e-5)
    return expected


def test_runtime_never_imports_torch(tmp_path):
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 4, "hidden_size": 4, "pooling": "max"}
    folder = pretrained_folder(tmp_path / "clf", SequenceClassifier(**arguments), arguments, {"labels": ["n", "p"]})
    export(folder, tmp_path / "onnx")
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import deploy, json\n"
        f"print(json.dumps(deploy.load({str(tmp_path / 'onnx')!r}).classify(['w1 w2', 'w3'])))\n"
        "assert 'lightning' not in sys.modules and 'datasets' not in sys.modules\n"
        # of the zoo, only its torch-free folder
        "assert all(m.split('.')[:2] == ['zoo', 'common'] for m in sys.modules if m.startswith('zoo.'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [row["label"] in ("n", "p") for row in json.loads(result.stdout)] == [True, True]


def test_a_graph_that_disagrees_with_torch_fails_verification(tmp_path):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 4, "hidden_size": 4}
    export(pretrained_folder(tmp_path / "clf", SequenceClassifier(**arguments), arguments), tmp_path / "onnx")
    other = classifier_graphs(SequenceClassifier(**arguments).eval()).graphs[0]  # other weights, same shapes
    with pytest.raises(ExportError, match="differ by"):
        verify(other, tmp_path / "onnx" / "model.onnx", tolerance=1e-4)


def test_a_tolerance_the_graph_cannot_meet_refuses_the_export_and_changes_nothing(tmp_path):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "embedding_dim": 16, "hidden_size": 16, "num_layers": 2, "cell": "lstm"}
    folder = pretrained_folder(tmp_path / "lm", RNNLanguageModel(**arguments), arguments)
    refused = r"model.onnx: onnxruntime and PyTorch differ by \S+ on logits \(batch \d+, time \d+\); tolerance 1e-12"
    with pytest.raises(ExportError, match=refused):
        export(folder, tmp_path / "onnx", tolerance=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]  # no folder, no staging left

    config = export(folder, tmp_path / "onnx")  # the default tolerance is met
    assert config.verification["model.onnx"]["tolerance"] == 1e-4
    written = {p.name: p.read_bytes() for p in (tmp_path / "onnx").iterdir()}
    with pytest.raises(ExportError, match=refused):
        export(folder, tmp_path / "onnx", tolerance=1e-12)
    assert {p.name: p.read_bytes() for p in (tmp_path / "onnx").iterdir()} == written  # the earlier export stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm", "onnx"]


def test_failed_export_writes_nothing(tmp_path, monkeypatch):
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 4, "hidden_size": 4}
    folder = pretrained_folder(tmp_path / "clf", SequenceClassifier(**arguments), arguments)
    gated = {**arguments, "cell": "gated"}
    with pytest.raises(ExportError, match=r"the loop cells \(gated, jordan\) do not export"):
        export(pretrained_folder(tmp_path / "gated", SequenceClassifier(**gated), gated), tmp_path / "onnx")

    def disagree(*args, **kwargs):
        raise ExportError("differ")

    monkeypatch.setattr("deploy.export.verify", disagree)
    with pytest.raises(ExportError):
        export(folder, tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf", "gated"]  # no folder, no staging left
    with pytest.raises(ZooError, match="no pretrained folder at"):
        export(tmp_path / "missing", tmp_path / "onnx")
    with pytest.raises(ValueError, match="not an exported model folder"):
        deploy.load(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="not an exported model folder"):
        deploy.load(tmp_path)


@pytest.mark.parametrize(("cell", "integer_op"), [("lstm", "DynamicQuantizeLSTM"), ("gru", "MatMulInteger")])
def test_int8_quantization(tmp_path, cell, integer_op):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "embedding_dim": 32, "hidden_size": 32, "num_layers": 2, "cell": cell}
    folder = pretrained_folder(tmp_path / "lm", RNNLanguageModel(**arguments), arguments)
    export(folder, tmp_path / "fp32")
    config = export(folder, tmp_path / "int8", quantize="int8")
    graph_ops = ops(tmp_path / "int8" / "model.onnx")
    assert integer_op in graph_ops and "LSTM" not in graph_ops  # a GRU stays a float GRU op
    assert config.quantization == "int8"
    assert 0 < config.verification["model.onnx"]["int8_max_abs_diff"] < 0.5
    fp32, int8 = deploy.load(tmp_path / "fp32"), deploy.load(tmp_path / "int8")
    tokens = np.array([[3, 4, 5, 6]])
    quantized_logits, logits = (p.step(tokens, p.zero_state(1))[0] for p in (int8, fp32))
    np.testing.assert_allclose(quantized_logits, logits, atol=0.5)


def test_int8_translator_quantizes_its_decoder_recurrence(tmp_path):
    torch.manual_seed(0)
    arguments = {"source_vocab_size": 24, "target_vocab_size": 24, "embedding_dim": 16, "hidden_size": 16}
    arguments |= {"context": "attention", "attention": "bahdanau", "cell": "gru"}
    tokenizers = {"source_tokenizer": translation_tokenizer(), "target_tokenizer": translation_tokenizer()}
    folder = save_pretrained(
        tmp_path / "s2s", Seq2Seq(**arguments).eval(), arguments=arguments,
        task_arguments={"beam_size": 1, "length_penalty": 1.0, "max_new_tokens": 8}, tokenizers=tokenizers,
    )  # fmt: skip
    config = export(folder, tmp_path / "int8", quantize="int8")
    decoder_ops = ops(tmp_path / "int8" / "decoder.onnx")
    assert "MatMulInteger" in decoder_ops and "GRU" not in decoder_ops  # onnxruntime has no integer GRU op
    assert "GRU" in ops(tmp_path / "int8" / "encoder.onnx")
    assert 0 < config.verification["decoder.onnx"]["int8_max_abs_diff"] < 0.5


SEQ2SEQ_VARIANTS = {
    "bahdanau-gru": {"context": "attention", "attention": "bahdanau", "cell": "gru"},
    "luong-feeding-lstm": {"context": "attention", "attention": "general", "input_feeding": True, "cell": "lstm"},
    "every-step-gru": {"context": "every_step", "cell": "gru", "bidirectional_encoder": False},
    "initial-lstm": {"context": "initial", "cell": "lstm", "num_layers": 2},
}


@pytest.mark.parametrize("variant", SEQ2SEQ_VARIANTS)
def test_seq2seq_exports_encoder_and_step_graphs_and_decodes_like_torch(tmp_path, variant):
    torch.manual_seed(0)
    arguments = {"source_vocab_size": 24, "target_vocab_size": 24, "embedding_dim": 8, "hidden_size": 8}
    arguments |= SEQ2SEQ_VARIANTS[variant]
    network = Seq2Seq(**arguments).eval()
    tokenizers = {"source_tokenizer": translation_tokenizer(), "target_tokenizer": translation_tokenizer()}
    folder = save_pretrained(
        tmp_path / "s2s",
        network,
        arguments=arguments,
        task_arguments={"beam_size": 3, "length_penalty": 1.0, "max_new_tokens": 12},
        tokenizers=tokenizers,
    )
    config = export(folder, tmp_path / "onnx")
    assert set(config.graphs) == {"encoder.onnx", "decoder.onnx"}
    assert ONNX_OP[arguments["cell"]] in ops(tmp_path / "onnx" / "encoder.onnx")
    # The decoder step's recurrence is its gate equations (zoo.cells.fused.SingleStep), checked against the
    # fused kernel.
    assert ONNX_OP[arguments["cell"]] not in ops(tmp_path / "onnx" / "decoder.onnx")

    predictor = deploy.load(tmp_path / "onnx")
    texts = ["w1 w2 w3 w4 w5", "w7", "w2 w2 w9 w11 w0 w3 w8 w8"]
    source, lengths = predictor.encode_sources(texts)
    tokenizer = Tokenizer.from_str(translation_tokenizer())
    for beam in (1, 3):
        expected = translate_ids(network, torch.from_numpy(source), torch.from_numpy(lengths), 2, 3, beam, 12)
        assert predictor.translate(texts, beam_size=beam) == tokenizer.decode_batch(expected)
    if network.attention is None:
        with pytest.raises(ValueError, match="no attention weights"):
            predictor.translate(texts, attention=True)
        return
    # Greedy: the weights the runtime returns are those the network computed while decoding.
    steps = []
    (expected,) = translate_ids(
        network, torch.from_numpy(source[:1]), torch.from_numpy(lengths[:1]), 2, 3, 1, 12, 1.0, steps
    )
    (result,) = predictor.translate(texts[:1], beam_size=1, attention=True)
    assert result["translation"] == tokenizer.decode(expected)
    assert result["target_tokens"][: len(expected)] == [tokenizer.id_to_token(i) for i in expected]
    assert result["source_tokens"] == ["w1", "w2", "w3", "w4", "w5", "<eos>"]
    weights = np.array(result["attention"])
    assert weights.shape == (len(result["target_tokens"]), len(result["source_tokens"]))
    np.testing.assert_allclose(weights, np.stack([step[0] for step in steps])[: len(weights), : lengths[0]], atol=1e-4)
    # Beam search: one row per target token (+ <eos>), each a distribution over the source.
    for result, translation in zip(predictor.translate(texts, attention=True), predictor.translate(texts), strict=True):
        weights = np.array(result["attention"])
        assert result["translation"] == translation
        assert weights.shape == (len(result["target_tokens"]), len(result["source_tokens"]))
        np.testing.assert_allclose(weights.sum(1), 1, atol=1e-3)
    with pytest.raises(ValueError, match="empty"):
        predictor.translate(["w1", "  "])
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        predictor.translate(["w1"], beam_size=0)


@pytest.mark.parametrize(("output", "char_encoder"), [("crf", "lstm"), ("softmax", "lstm"), ("crf", "cnn")])
def test_tagger_exports_viterbi_in_the_graph_and_tags_like_torch(tmp_path, output, char_encoder):
    torch.manual_seed(0)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    char_tokenizer = fit_char_tokenizer(WORDS, ["<pad>", "<unk>"])
    arguments = {"vocab_size": 23, "labels": labels, "embedding_dim": 8, "hidden_size": 6, "output": output}
    arguments |= {"char_vocab_size": char_tokenizer.get_vocab_size(), "char_embedding_dim": 4, "char_hidden_size": 3}
    arguments |= {"char_encoder": char_encoder}
    network = SequenceTagger(**arguments).eval()
    with torch.no_grad():  # strong transitions, so that the CRF's decisions differ from per-token argmax
        if network.crf is not None:
            network.crf.transitions.normal_(0, 3)
    tokenizers = {"tokenizer": word_tokenizer(), "char_tokenizer": char_tokenizer.to_str()}
    folder = save_pretrained(
        tmp_path / "tagger",
        network,
        arguments=arguments,
        task_arguments={"labels": labels},
        tokenizers=tokenizers,
    )
    export(folder, tmp_path / "onnx")
    graph_ops = ops(tmp_path / "onnx" / "model.onnx")
    assert "LSTM" in graph_ops and ("Loop" in graph_ops) == (output == "crf")

    sentences = ["w1 w2 w3 w4 w5 w6 w7 w8 w9", "w3", "w9 w13 Zürich w0"]
    predictor = deploy.load(tmp_path / "onnx")
    rows = predictor.tag(sentences)
    assert [row["words"] for row in rows] == [s.split() for s in sentences]
    for sentence, row in zip(sentences, rows, strict=True):  # each alone in torch: padding changes nothing
        words = sentence.split()
        ids = torch.tensor([Tokenizer.from_str(word_tokenizer()).encode(words, is_pretokenized=True).ids])
        char_ids = [char_tokenizer.encode(word).ids for word in words]
        chars = torch.zeros(1, len(words), max(map(len, char_ids)), dtype=torch.long)
        for col, word_ids in enumerate(char_ids):
            chars[0, col, : len(word_ids)] = torch.tensor(word_ids)
        char_lengths = torch.tensor([[len(word_ids) for word_ids in char_ids]])
        lengths = torch.tensor([len(words)])
        with torch.no_grad():
            emissions = network(ids, lengths, chars, char_lengths)
            expected = network.decode(emissions, torch.ones(1, len(words), dtype=torch.bool))[0]
        assert row["tags"] == [labels[t] for t in expected.tolist()]
    with pytest.raises(ValueError, match="empty"):
        predictor.tag(["w1", " "])


def test_export_reports_task_parity_on_held_out_rows(tmp_path):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 8, "hidden_size": 8, "pooling": "mean"}
    folder = pretrained_folder(tmp_path / "clf", SequenceClassifier(**arguments), arguments, {"labels": ["n", "p"]})
    rows = datasets.Dataset.from_dict({"text": [" ".join(WORDS[i : i + 5]) for i in range(12)], "label": [0, 1] * 6})
    parity = export(folder, tmp_path / "onnx", parity_data=rows, parity_examples=10).parity
    assert parity["examples"] == 10 and parity["same_label"] == 1.0
    assert parity["onnx_accuracy"] == parity["torch_accuracy"]
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["parity"] == parity

    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8, "num_layers": 2}
    folder = pretrained_folder(tmp_path / "lm", RNNLanguageModel(**arguments), arguments)
    sentences = datasets.Dataset.from_dict({"sentence": ["w1 w2 w3", "w4 w5", "w6 nonsense w7 w8"]})
    parity = export(folder, tmp_path / "lm-onnx", parity_data=sentences).parity
    assert parity["tokens"] == 12 and parity["onnx_perplexity"] == pytest.approx(parity["torch_perplexity"], rel=1e-5)
