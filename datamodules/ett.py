"""Multivariate forecasting on the ETT benchmark (Zhou et al. 2021): windows of an hourly series.

The protocol is the benchmark's, as the reference loaders (``Dataset_ETT_hour`` of Informer,
Autoformer, LTSF-Linear, PatchTST, SegRNN) implement it: the first 12 months of 30 days are train,
the next 4 validation and the next 4 test, each later split reaching back by ``input_length`` rows
so that its first forecast starts at its border; every column is scaled with the train rows' mean
and standard deviation; windows start at every row (stride 1). Unlike several published loaders,
the test loader keeps every window (no ``drop_last``), so the test metrics cover the whole split.
"""

from functools import cached_property
from pathlib import Path
from typing import Literal

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import items_loader
from datamodules.loading import DataError, require_positive

HOURS_PER_MONTH = 30 * 24
# Row borders of the splits before reaching back: train [0, 8640), validation [8640, 11520), test [11520, 14400).
BORDERS = {"train": (0, 12 * HOURS_PER_MONTH), "validation": (12 * HOURS_PER_MONTH, 16 * HOURS_PER_MONTH)}
BORDERS["test"] = (16 * HOURS_PER_MONTH, 20 * HOURS_PER_MONTH)
SERIES = ("ETTh1", "ETTh2")
COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


def split_rows(split: str, input_length: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` whose windows form ``split``: its border, reaching back ``input_length``."""
    start, stop = BORDERS[split]
    return max(0, start - input_length), stop


class Windows(Dataset):
    """Every window of ``values`` ``(T, C)``: ``series`` (``input_length`` rows) and ``target`` (the
    next ``horizon``), starting at each row."""

    def __init__(self, values: torch.Tensor, input_length: int, horizon: int, limit: int | None = None):
        self.values, self.input_length, self.horizon = values, input_length, horizon
        count = len(values) - input_length - horizon + 1
        self.count = count if limit is None else min(count, limit)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        middle = i + self.input_length
        return {"series": self.values[i:middle], "target": self.values[middle : middle + self.horizon]}


class ETTDataModule(L.LightningDataModule):
    """Windows of ETTh1 or ETTh2 (or a CSV of the same layout: a ``date`` column, then numbers).

    Args:
        data_dir: a folder holding ``<series>.csv``; ``None`` reads it from the Hugging Face Hub
            repository ``hub_name`` (``ETT-small/<series>.csv``, the original repository's layout).
        series: ``ETTh1`` or ``ETTh2`` (the file's name without ``.csv``).
        input_length: rows the model reads (L).
        horizon: rows it forecasts (H: 96, 192, 336 or 720 in the benchmark).
        features: ``M`` (multivariate: every column in and out) or ``S`` (univariate: ``target`` only).
        target: the column forecast in the ``S`` setting (and drawn by ``rnnzoo forecast``).
        batch_size, eval_batch_size: of training and of validation/test/predict batches.
        max_samples: use only the first ``max_samples`` windows of each split (quick runs).
        predict_series: raw windows (``input_length`` rows of the columns, the data's units) for
            ``rnnzoo predict``; default: the test split's windows.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        series: str = "ETTh1",
        hub_name: str = "zhouhaoyi/ETDataset",
        input_length: int = 720,
        horizon: int = 96,
        features: Literal["M", "S"] = "M",
        target: str = "OT",
        batch_size: int = 64,
        eval_batch_size: int = 256,
        max_samples: int | None = None,
        predict_series: list[list[list[float]]] | None = None,
    ):
        super().__init__()
        require_positive(input_length=input_length, horizon=horizon, batch_size=batch_size)
        require_positive(eval_batch_size=eval_batch_size)
        if features not in ("M", "S"):
            raise ValueError(f"features must be 'M' (every column) or 'S' (the target alone), got {features!r}")
        if input_length + horizon > BORDERS["train"][1]:
            raise ValueError(f"input_length + horizon must fit the {BORDERS['train'][1]} training rows")
        self.data_dir = str(Path(data_dir).expanduser()) if data_dir is not None else None
        self.save_hyperparameters()

    @classmethod
    def of_model(cls, data_dir: str | None, task_arguments: dict) -> "ETTDataModule":
        """The data a forecaster was trained on, from its hyperparameters (``series``, ``columns``, sizes)."""
        columns = list(task_arguments["columns"])
        univariate = len(columns) == 1
        data = cls(
            data_dir, series=task_arguments.get("series") or "ETTh1", input_length=task_arguments["input_length"],
            horizon=task_arguments["horizon"], features="S" if univariate else "M",
            target=columns[0] if univariate else "OT",
        )  # fmt: skip
        if data.columns != columns:
            raise DataError(f"the data's columns {data.columns} are not the model's {columns}")
        return data

    @classmethod
    def test_rows(cls, data_dir: str, task_arguments: dict) -> datasets.Dataset:
        """The test windows of a forecaster's data, ``series`` and ``target`` in the data's units (``rnnzoo
        export --data_dir``'s parity rows)."""
        windows = cls.of_model(data_dir, task_arguments).windows("test", scaled=False)
        items = [windows[i] for i in range(len(windows))]
        columns = {key: torch.stack([item[key] for item in items]).numpy() for key in ("series", "target")}
        features = datasets.Features(
            {key: datasets.Array2D(values.shape[1:], "float32") for key, values in columns.items()}
        )
        return datasets.Dataset.from_dict(columns, features=features)

    @cached_property
    def table(self) -> datasets.Dataset:
        """The whole CSV, as ``datasets`` reads it."""
        hp = self.hparams
        if self.data_dir is None:
            path = f"hf://datasets/{hp.hub_name}/ETT-small/{hp.series}.csv"
            try:
                return datasets.load_dataset("csv", data_files={"data": path})["data"]
            except Exception as err:  # the Hub client's errors have many types (offline mode, DNS, HTTP)
                raise DataError(
                    f"could not read {path} from the Hugging Face Hub ({type(err).__name__}: {err}). Without network "
                    f"access, pass a local folder holding {hp.series}.csv (the original ETDataset file), e.g. "
                    "`--data.data_dir path/to/ett` (or data_dir=... in Python)."
                ) from err
        path = Path(self.data_dir) / f"{hp.series}.csv"
        if not path.is_file():
            found = sorted(p.name for p in Path(self.data_dir).glob("*.csv")) if Path(self.data_dir).is_dir() else []
            raise DataError(f"{path} does not exist (in {self.data_dir}: {', '.join(found) or 'no .csv files'})")
        return datasets.load_dataset("csv", data_files={"data": str(path)})["data"]

    @cached_property
    def columns(self) -> list[str]:
        """The columns the model reads and forecasts, in order."""
        numbers = [name for name in self.table.column_names if name != "date"]
        if self.hparams.target not in numbers:
            raise DataError(f"{self.hparams.series}.csv has no column {self.hparams.target!r}; it has {numbers}")
        return numbers if self.hparams.features == "M" else [self.hparams.target]

    @cached_property
    def raw_values(self) -> np.ndarray:
        """``(rows, columns)`` float64 of the first 20 months, in the data's units."""
        stop = BORDERS["test"][1]
        if len(self.table) < stop:
            raise DataError(f"{self.hparams.series}.csv has {len(self.table)} rows; the benchmark's splits need {stop}")
        try:
            values = np.stack([np.asarray(self.table[name][:stop], dtype=np.float64) for name in self.columns], 1)
        except (TypeError, ValueError) as err:
            raise DataError(f"{self.hparams.series}.csv: a column is not all numbers ({err})") from None
        if not np.isfinite(values).all():
            raise DataError(f"{self.hparams.series}.csv has missing or infinite values in its first {stop} rows")
        return values

    @cached_property
    def scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """Each column's mean and (population) standard deviation over the train rows, as scikit-learn's
        ``StandardScaler`` in the reference loaders."""
        start, stop = BORDERS["train"]
        train = self.raw_values[start:stop]
        std = train.std(0)
        if not (std > 0).all():
            raise DataError(f"a column is constant over the train rows: {dict(zip(self.columns, std, strict=True))}")
        return train.mean(0), std

    @property
    def mean(self) -> list[float]:
        return self.scaling[0].tolist()

    @property
    def std(self) -> list[float]:
        return self.scaling[1].tolist()

    @property
    def input_length(self) -> int:
        return self.hparams.input_length

    @property
    def horizon(self) -> int:
        return self.hparams.horizon

    @property
    def series(self) -> str:
        return self.hparams.series

    def prepare_data(self):
        _ = self.raw_values  # read (or download) and check before any process sets up

    def split_values(self, split: str, scaled: bool = True) -> np.ndarray:
        """The rows of ``split``'s windows, scaled (as the model trains) or in the data's units."""
        start, stop = split_rows(split, self.hparams.input_length)
        values = self.raw_values[start:stop]
        if scaled:
            mean, std = self.scaling
            values = (values - mean) / std
        return values

    def windows(self, split: str, scaled: bool = True) -> Windows:
        values = torch.from_numpy(self.split_values(split, scaled).astype(np.float32))
        return Windows(values, self.hparams.input_length, self.hparams.horizon, self.hparams.max_samples)

    def train_dataloader(self):
        return DataLoader(self.windows("train"), batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.windows("validation"), batch_size=self.hparams.eval_batch_size)

    def test_dataloader(self):
        return DataLoader(self.windows("test"), batch_size=self.hparams.eval_batch_size)  # every window: no drop_last

    def predict_dataloader(self):
        """Raw windows (``{"series": [...]}``), which the task's ``predict`` checks and scales."""
        if self.hparams.predict_series is not None:
            return items_loader(self.hparams.predict_series, "series", self.hparams.eval_batch_size)
        return DataLoader(
            self.windows("test", scaled=False),
            batch_size=self.hparams.eval_batch_size,
            collate_fn=lambda batch: {"series": [window["series"].tolist() for window in batch]},
        )
