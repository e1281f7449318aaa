import atexit
import os
import random
import shutil
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
