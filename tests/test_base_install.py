"""The base install (``pip install rnnzoo``): the runtime and the service without torch or Lightning.

.ci/run runs these in a virtual environment holding the base install alone (``RNNZOO_BASE_INSTALL=1``).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("RNNZOO_BASE_INSTALL") != "1",
    reason="needs a virtual environment with the base install alone (.ci/run sets RNNZOO_BASE_INSTALL=1)",
)


def rnnzoo(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "rnnzoo"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_training_stack_is_not_installed():
    assert [name for name in ("torch", "lightning", "datasets") if importlib.util.find_spec(name)] == []


def test_help_lists_every_command_without_a_traceback():
    result = rnnzoo("--help")
    assert result.returncode == 0 and "rnnzoo serve" in result.stdout and "rnnzoo fit" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["fit"], ["export", "--ckpt", "x.ckpt", "--out", "y"], ["zoo", "list"]])
def test_training_commands_name_the_extra_to_install(command):
    result = rnnzoo(*command)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "pip install 'rnnzoo[train]'" in result.stderr


def test_exported_models_predict_without_torch():
    import deploy

    folder = Path(os.environ["RNNZOO_TEST_EXPORTS"]) / "sentiment"
    (prediction,) = deploy.load(folder).classify(["w1 w2 w3"])
    assert prediction["label"] in ("neg", "pos") and 0.5 <= prediction["probability"] <= 1.0
    assert "torch" not in sys.modules


def test_an_export_cannot_name_files_outside_its_folder(tmp_path):
    import json
    import shutil

    import deploy

    folder = tmp_path / "sentiment"
    shutil.copytree(Path(os.environ["RNNZOO_TEST_EXPORTS"]) / "sentiment", folder)
    config = json.loads((folder / "config.json").read_text())
    for name in (str(folder / "tokenizer.json"), "../sentiment/tokenizer.json"):
        (folder / "config.json").write_text(json.dumps({**config, "tokenizers": {"tokenizer": name}}))
        with pytest.raises(ValueError, match="not a plain file name inside the folder"):
            deploy.load(folder)
