import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Keep the tests' Arrow caches (and those of the `rnnzoo` subprocesses they start) out of the
# user's ~/.cache/huggingface; `datasets` reads this when it is imported, so set it first.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="rnnzoo-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RNNZOO_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """A real corpus from ../shared/data; skipped when absent, failed in CI (RNNZOO_REQUIRE_SHARED_DATA=1)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real corpus {path} not found (set RNNZOO_SHARED_DATA to the data folder)"
        if os.environ.get("RNNZOO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def ptb_dir() -> Path:
    return shared_dataset("ptb")


def write_synthetic_corpus(folder: Path, rows: dict[str, int], seed: int = 0, column: str = "sentence") -> Path:
    """Random sentences over a 30-word vocabulary, one Parquet file per split."""
    import datasets  # the training stack: the runtime tests run without it

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in rows.items():
        sentences = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(n)]
        datasets.Dataset.from_dict({column: sentences}).to_parquet(str(folder / f"{split}.parquet"))
    return folder


@pytest.fixture
def synthetic_corpus(tmp_path) -> Path:
    return write_synthetic_corpus(tmp_path / "corpus", {"train": 200, "validation": 40, "test": 40})


# ---- shared helpers (plain functions; the training stack is imported inside them) -------------

WORDS = [f"w{i}" for i in range(20)]  # the vocabulary of the tiny models the deploy/service tests build


def word_tokenizer() -> str:
    """Word-level tokenizer JSON: <pad> <unk> <eos>, then WORDS (ids 3..22)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<eos>", *WORDS])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer.to_str()


def translation_tokenizer() -> str:
    """Word-level tokenizer JSON: <pad> <unk> <bos> <eos>, then WORDS (ids 4..23)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer.to_str()


def tokenizer_json() -> str:
    """The smallest word-level tokenizer JSON: <unk> and "a"."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    return Tokenizer(WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).to_str()


def pretrained_folder(path, network, arguments, task_arguments=None):
    """A pretrained folder for ``network`` (a language model or classifier) with ``word_tokenizer()``."""
    from zoo.storage.pretrained import save_pretrained

    return save_pretrained(
        path,
        network,
        arguments=arguments,
        task_arguments=task_arguments or {},
        tokenizers={"tokenizer": word_tokenizer()},
    )


PTB_CONFIG = REPO / "zoo" / "configs" / "ptb_lstm_small.yaml"
QUICK = (  # a small, fast ptb_lstm_small run for the CLI tests
    "--data.max_samples 200 --trainer.enable_progress_bar false "
    "--model.init_args.hidden_size 32 --model.init_args.embedding_dim 32"
).split()


def rnnzoo(cwd: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed ``rnnzoo`` command in ``cwd``; with ``check`` a failure shows its output."""
    command = [str(Path(sys.executable).parent / "rnnzoo"), *args]
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result
