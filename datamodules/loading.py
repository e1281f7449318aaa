"""Loading dataset splits from the Hugging Face Hub or from a local folder of Parquet files."""

from pathlib import Path

import datasets


class DataError(ValueError):
    """The data a user pointed rnnzoo at is missing or not in the expected shape."""


def load_splits(
    hub_name: str,
    data_dir: str | Path | None,
    splits: tuple[str, ...],
    hub_config: str | None = None,
    hub_revision: str | None = None,
    hub_subdir: str | None = None,
) -> datasets.DatasetDict:
    """Load ``splits`` from ``data_dir`` (``<split>.parquet`` files) or, without one, from the Hub.

    Local folders use the layout the Hub's Parquet conversion uses, so a Hub dataset saved with
    ``ds[split].to_parquet(f"{dir}/{split}.parquet")`` loads back identically. ``hub_revision`` and
    ``hub_subdir`` select a branch and folder of the Hub repository, e.g. the Parquet export
    (``refs/convert/parquet``) of a dataset that only has a loading script.
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data_dir {str(folder)!r} does not exist or is not a folder")
        files = {split: folder / f"{split}.parquet" for split in splits}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            found = sorted(p.name for p in folder.glob("*.parquet")) or ["no .parquet files"]
            raise DataError(
                f"data_dir {str(folder)!r} lacks {', '.join(missing)} (found: {', '.join(found)}); "
                f"expected one <split>.parquet per split: {', '.join(splits)}"
            )
        return datasets.load_dataset("parquet", data_files={s: str(p) for s, p in files.items()})
    try:
        loaded = datasets.load_dataset(hub_name, hub_config, revision=hub_revision, data_dir=hub_subdir)
    except ConnectionError as err:
        raise DataError(
            f"could not download {hub_name!r} from the Hugging Face Hub ({err}). Without network access, "
            f"pass a local folder holding {', '.join(f'{s}.parquet' for s in splits)}, e.g. "
            "`--data.data_dir path/to/folder` (or data_dir=... in Python)."
        ) from err
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        raise DataError(
            f"{hub_name!r} is a loading-script dataset, which `datasets` no longer runs; load its Parquet "
            "export instead (hub_revision='refs/convert/parquet', hub_subdir=<config name>) or use data_dir"
        ) from err
    missing_splits = [s for s in splits if s not in loaded]
    if missing_splits:
        raise DataError(f"{hub_name!r} has no split(s) {missing_splits}; it has {list(loaded)}")
    return datasets.DatasetDict({s: loaded[s] for s in splits})


def require_column(dataset: datasets.Dataset, column: str, split: str) -> None:
    if column not in dataset.column_names:
        raise DataError(f"the {split!r} split has no column {column!r}; its columns are {dataset.column_names}")


def require_positive(**sizes: int) -> None:
    """Refuse sizes below 1 with the argument's name (``bptt must be >= 1, got 0``)."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
