"""Files from strangers and user folders: a crafted or damaged .ckpt runs nothing and says so in one
line, remote .ckpt files are refused, and --out never deletes a folder rnnzoo did not write."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from deploy.export import export
from tests.conftest import PTB_CONFIG, REPO, pretrained_folder, rnnzoo, shared_dataset
from zoo import SequenceClassifier
from zoo.storage.pretrained import save_pretrained

ARGUMENTS = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 8, "hidden_size": 8}


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab_size": 3}, "payload": Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--ckpt", "{ckpt}", "--out", "out"],
        ["generate", "--ckpt", "{ckpt}"],
        ["translate", "--ckpt", "{ckpt}", "--text", "ein Hund"],
        ["zoo", "publish", "{ckpt}", "--out", "out"],
        ["test", "--config", str(PTB_CONFIG), "--data.data_dir", "{ptb}", "--ckpt_path", "{ckpt}"],
    ],
    ids=lambda command: command[0] if command[0] != "zoo" else "publish",
)
def test_a_crafted_checkpoint_runs_no_code(tmp_path, crafted, command):
    ckpt, marker = crafted
    ptb = shared_dataset("ptb")
    result = rnnzoo(tmp_path, *[part.format(ckpt=ckpt, ptb=ptb) for part in command], check=False)
    assert result.returncode != 0 and not marker.exists()
    assert "holds Python objects other than tensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_remote_checkpoints_are_refused(tmp_path):
    url = "http://127.0.0.1:9/run/last.ckpt"  # nothing listens: a refusal, not a failed download
    fitted = rnnzoo(tmp_path, "fit", "--config", str(PTB_CONFIG), "--ckpt_path", url, check=False)
    assert fitted.returncode != 0 and "remote .ckpt files are not loaded" in fitted.stderr
    generated = rnnzoo(tmp_path, "generate", "--ckpt", url, check=False)
    assert generated.returncode == 2 and "remote .ckpt files are not loaded" in generated.stderr


def test_damaged_files_are_one_line_errors(tmp_path):
    checkpoint = tmp_path / "damaged.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    result = rnnzoo(tmp_path, "export", "--ckpt", str(checkpoint), "--out", "out", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{checkpoint}: not a readable checkpoint (truncated or corrupted" in result.stderr

    folder = tmp_path / "entry"
    shutil.copytree(REPO / "zoo" / "pretrained_models" / "imdb-bilstm", folder)
    (folder / "entry.json").unlink()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    result = rnnzoo(tmp_path, "zoo", "predict", str(folder), "--text", "great", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{weights}: cannot read the weights" in result.stderr


def test_a_mistyped_checkpoint_path_names_its_neighbours(tmp_path):
    run = tmp_path / "checkpoints"
    run.mkdir()
    (run / "epoch=18-val_f1=0.8980.ckpt").write_bytes(b"")
    missing = run / "epoch=18-val_f1=0.8979.ckpt"
    result = rnnzoo(tmp_path, "test", "--config", str(PTB_CONFIG), "--ckpt_path", str(missing), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"--ckpt_path {missing}: no such file (in {run}: epoch=18-val_f1=0.8980.ckpt)" in result.stderr


@pytest.fixture
def classifier(tmp_path):
    torch.manual_seed(0)
    arguments = {**ARGUMENTS, "pooling": "max"}
    return pretrained_folder(tmp_path / "clf", SequenceClassifier(**arguments), arguments, {"labels": ["a", "b"]})


def test_out_never_replaces_a_user_folder(tmp_path, classifier):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a folder written by rnnzoo"):
        export(classifier, user)
    assert (user / "notes.txt").read_text() == "keep me" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]

    (tmp_path / "notes.txt").write_text("keep me too")
    result = rnnzoo(tmp_path, "export", "--ckpt", str(classifier), "--out", ".", check=False)
    assert result.returncode == 2 and "holds the working directory" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me too"

    published = rnnzoo(tmp_path, "zoo", "publish", str(tmp_path / "x.ckpt"), "--out", str(user), check=False)
    assert published.returncode == 2 and (user / "notes.txt").exists()


def test_an_earlier_rnnzoo_folder_is_replaced_whole(tmp_path, classifier):
    out = tmp_path / "exported"
    export(classifier, out)
    first = json.loads((out / "config.json").read_text())["source_sha256"]
    torch.manual_seed(1)
    other = save_pretrained(
        tmp_path / "clf2",
        SequenceClassifier(**ARGUMENTS),
        arguments=ARGUMENTS,
        task_arguments={"labels": ["a", "b"]},
        tokenizers={"tokenizer": (classifier / "tokenizer.json").read_text()},
    )
    export(other, out)  # an earlier export is replaced
    assert json.loads((out / "config.json").read_text())["source_sha256"] != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old copy left

    (out / "notes.txt").write_text("added by the user")  # no longer only what rnnzoo wrote
    with pytest.raises(FileExistsError):
        export(other, out)
    with pytest.raises(FileExistsError, match="is not a folder"):
        export(other, out / "notes.txt")


@pytest.fixture(scope="module")
def exported_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    export(pretrained_folder(root / "source", SequenceClassifier(**ARGUMENTS), ARGUMENTS, {"labels": ["n", "p"]}),
           root / "export")  # fmt: skip
    return root / "export"


def with_external_weights(model_path, location: str, nested: bool = False) -> None:
    """Rewrite ``model_path`` so that one initializer (in a Loop body when ``nested``) reads its bytes
    from ``location``, as a crafted folder would."""
    import onnx
    from onnx import external_data_helper, helper, numpy_helper

    model = onnx.load(str(model_path))
    weights = model.graph.initializer
    if nested:
        body = helper.make_graph([], "body", [], [], initializer=[numpy_helper.from_array(np.ones(3, np.float32), "w")])
        model.graph.node.append(helper.make_node("Loop", ["", ""], ["out"], body=body))
        weights = model.graph.node[-1].attribute[0].g.initializer
    external_data_helper.set_external_data(weights[0], location=location, offset=0, length=12)
    weights[0].data_location = onnx.TensorProto.EXTERNAL
    weights[0].ClearField("raw_data")
    model_path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("location", "nested"),
    [("../../secret.bin", False), ("/etc/passwd", False), ("weights.bin", False), ("../secret.bin", True)],
)
def test_onnx_external_data_is_refused_before_onnxruntime_reads_it(exported_classifier, tmp_path, location, nested):
    import deploy
    from zoo.common.formats import FormatError

    folder = tmp_path / "crafted"
    shutil.copytree(exported_classifier, folder)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    (folder / "weights.bin").write_bytes(b"\0" * 64)  # even a file inside the folder: exports never write one
    with_external_weights(folder / "model.onnx", location, nested)
    with pytest.raises(FormatError, match="keeps its values in another file"):
        deploy.load(folder)
    assert deploy.load(exported_classifier).classify(["w1 w2"])[0]["label"] in ("n", "p")  # the real export loads


def overlong_tag(field: int, wire: int) -> bytes:
    """The tag of ``field`` as a 5-byte varint with bit 32 set: protobuf keeps a tag's low 32 bits, so it
    still reads ``field``, and a reader that keeps all 64 sees another field."""
    key = 1 << 32 | field << 3 | wire
    return bytes([0x80 | key >> shift & 0x7F for shift in (0, 7, 14, 21)] + [key >> 28])


def varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(0x80 | value & 0x7F)
        value >>= 7
    return bytes(encoded + bytes([value]))


def length_delimited(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def test_external_data_behind_overlong_field_tags_is_refused(exported_classifier, tmp_path):
    """``external_data`` (13) and ``data_location`` (14) tagged with 5-byte varints: a reader that keeps 64 bits
    of a tag sees other fields, onnxruntime sees an external tensor."""
    import subprocess
    import sys

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    import deploy
    from zoo.common.formats import FormatError

    folder = tmp_path / "crafted"
    shutil.copytree(exported_classifier, folder)
    model = onnx.load(str(folder / "model.onnx"))
    tensor = model.graph.initializer.pop(0)
    (folder / "weights.bin").write_bytes(numpy_helper.to_array(tensor).tobytes())
    tensor.ClearField("raw_data")  # its values are now only in weights.bin
    entries = {"location": "weights.bin", "offset": "0", "length": str((folder / "weights.bin").stat().st_size)}
    entries = [onnx.StringStringEntryProto(key=k, value=v).SerializeToString() for k, v in entries.items()]
    hidden = b"".join(length_delimited(overlong_tag(13, 2), entry) for entry in entries)  # external_data
    hidden += overlong_tag(14, 0) + varint(onnx.TensorProto.EXTERNAL)  # data_location
    graph = length_delimited(varint(5 << 3 | 2), tensor.SerializeToString() + hidden)  # GraphProto.initializer
    # A second ModelProto.graph is merged into the first: the crafted tensor joins its initializers.
    (folder / "model.onnx").write_bytes(model.SerializeToString() + length_delimited(varint(7 << 3 | 2), graph))
    ort.InferenceSession(str(folder / "model.onnx"))  # it loads without the raw_data: onnxruntime read weights.bin

    with pytest.raises(FormatError, match="not a valid ONNX file"):  # upb, protobuf's default parser
        deploy.load(folder)
    check = f"import deploy.external_data as e; e.check_no_external_data({str(folder / 'model.onnx')!r})"
    pure_python = subprocess.run(  # protobuf's pure-Python parser keeps the 5-byte tags as unknown fields
        [sys.executable, "-c", check], env={**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"},
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert "TensorProto has fields onnx" in pure_python.stderr, pure_python.stderr


def test_a_symlinked_file_in_a_folder_is_refused(exported_classifier, tmp_path):
    import deploy
    from zoo.common.formats import FormatError
    from zoo.storage.pretrained import load_pretrained

    folder = tmp_path / "linked"
    shutil.copytree(exported_classifier, folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(exported_classifier / "tokenizer.json")
    with pytest.raises(FormatError, match="tokenizer.json is a symbolic link"):
        deploy.load(folder)
    source = tmp_path / "pretrained"
    pretrained_folder(source, SequenceClassifier(**ARGUMENTS), ARGUMENTS)
    (source / "model.safetensors").rename(tmp_path / "weights")
    (source / "model.safetensors").symlink_to(tmp_path / "weights")
    with pytest.raises(FormatError, match="model.safetensors is a symbolic link"):
        load_pretrained(source)


def test_symlinked_json_files_of_a_folder_are_refused(exported_classifier, tmp_path):
    """config.json, entry.json and metrics.json go through the same check as the weights and tokenizers."""
    import deploy
    from zoo.common.formats import FormatError
    from zoo.storage.hub import from_pretrained, write_entry

    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "linked"
    shutil.copytree(exported_classifier, folder)
    (folder / "config.json").rename(outside / "config.json")
    (folder / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(FormatError, match="config.json is a symbolic link"):
        deploy.load(folder)

    source = pretrained_folder(tmp_path / "pretrained", SequenceClassifier(**ARGUMENTS), ARGUMENTS)
    (outside / "metrics.json").write_text(json.dumps({"outside": "secret"}))
    (source / "metrics.json").symlink_to(outside / "metrics.json")
    with pytest.raises(FormatError, match="metrics.json is a symbolic link"):
        from_pretrained(source)
    (source / "metrics.json").unlink()
    write_entry(source, "linked")
    (source / "entry.json").rename(outside / "entry.json")
    (source / "entry.json").symlink_to(outside / "entry.json")
    with pytest.raises(FormatError, match="entry.json is a symbolic link"):
        from_pretrained(source)


def test_a_tokenizer_file_cannot_pad_or_hang_or_exhaust_the_reader(exported_classifier, tmp_path):
    import deploy
    from zoo.common.formats import MAX_JSON_BYTES, FormatError
    from zoo.storage.pretrained import load_pretrained

    folder = tmp_path / "padded"
    shutil.copytree(exported_classifier, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["padding"] = {"strategy": {"Fixed": 20_000_000}, "direction": "Right", "pad_to_multiple_of": None,
                            "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    predictor = deploy.load(folder)
    ids, lengths = predictor.encode(["w1 w2"])
    assert ids.shape == (1, 2) and lengths.tolist() == [2]  # padded by rnnzoo to the batch, not to 20,000,000
    assert predictor.classify(["w1 w2"]) == deploy.load(exported_classifier).classify(["w1 w2"])

    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")  # reading it would wait forever
    with pytest.raises(FormatError, match="tokenizer.json is not a regular file"):
        deploy.load(folder)
    (folder / "tokenizer.json").unlink()
    with open(folder / "tokenizer.json", "wb") as big:
        big.truncate(MAX_JSON_BYTES + 1)  # sparse: its size, not its bytes, is what is checked
    with pytest.raises(FormatError, match=f"tokenizer.json: {MAX_JSON_BYTES + 1:,} bytes"):
        deploy.load(folder)

    source = pretrained_folder(tmp_path / "pretrained", SequenceClassifier(**ARGUMENTS), ARGUMENTS)
    with open(source / "config.json", "ab") as big:
        big.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(FormatError, match=f"config.json: {MAX_JSON_BYTES + 1:,} bytes"):
        load_pretrained(source)


def test_sizes_in_config_json_are_checked_against_the_weights_before_allocating(tmp_path):
    """vocab_size 1,000,000 x embedding_dim 2,048 would take 8 GB before a single weight is read."""
    from zoo.storage.pretrained import load_pretrained

    source = pretrained_folder(tmp_path / "pretrained", SequenceClassifier(**ARGUMENTS), ARGUMENTS)
    config = json.loads((source / "config.json").read_text())
    config["arguments"].update(vocab_size=1_000_000, embedding_dim=2048)
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not fit .*: embedding.weight \[23, 8\] \(it needs \[1000000, 2048\]\)"):
        load_pretrained(source)


def test_a_crafted_last_checkpoint_of_a_second_checkpoint_callback_is_refused(tmp_path, crafted):
    """``--ckpt_path last`` takes the newest ``last.ckpt`` of every ModelCheckpoint, not only the first's."""
    ckpt, marker = crafted
    (tmp_path / "second").mkdir()
    shutil.copy(ckpt, tmp_path / "second" / "last.ckpt")
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n"
        + "".join(
            f"    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
            f"      init_args: {{dirpath: {tmp_path / folder}, save_last: true}}\n"
            for folder in ("first", "second")
        )
    )
    common = ("--config", str(PTB_CONFIG), "--config", str(callbacks), "--data.data_dir", str(shared_dataset("ptb")))
    result = rnnzoo(tmp_path, "test", *common, "--ckpt_path", "last", check=False)
    assert result.returncode != 0 and not marker.exists() and "Traceback" not in result.stderr
    assert f"{tmp_path / 'second' / 'last.ckpt'}: refused: it holds Python objects" in result.stderr
