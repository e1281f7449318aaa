"""Forecasting task: MSE or MAE loss, MSE and MAE on the scaled values (the benchmark's metrics)."""

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from lightning_modules.task_module import TaskModule
from zoo.networks.forecaster import Forecaster

LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss}


class ForecastingTask(TaskModule):
    """Trains a ``zoo.Forecaster``; ``columns``, ``input_length``, ``horizon``, the scaling (``mean``,
    ``std``) and ``series`` are linked from the datamodule.

    Args:
        loss: ``mse`` or ``mae`` (SegRNN trains on MAE), on the scaled values.
        architecture: the keyword arguments of ``zoo.Forecaster`` (model, normalization, sizes...).

    ``val_mse``/``val_mae``/``test_mse``/``test_mae`` average over every value of every window.
    """

    checked_hparams = ("columns", "input_length", "horizon")

    def __init__(
        self,
        columns: list[str],
        input_length: int,
        horizon: int,
        mean: list[float],
        std: list[float],
        series: str | None = None,
        loss: Literal["mse", "mae"] = "mse",
        **architecture,
    ):
        """``series``: the data's name (``ETTh1``), kept with the model."""
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.save_hyperparameters()
        self.network_arguments = {
            "input_length": input_length, "horizon": horizon, "channels": len(columns), "mean": mean, "std": std,
            **architecture,
        }  # fmt: skip
        self.net = Forecaster(input_length, horizon, len(columns), mean=mean, std=std, **architecture)
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not any(p.requires_grad for p in self.parameters()):
            raise ValueError(
                f"model={self.hparams.get('model', 'segrnn')!r} has no weights to train: evaluate it with `rnnzoo test`"
            )

    @property
    def columns(self) -> list[str]:
        return list(self.hparams.columns)

    @property
    def input_length(self) -> int:
        return self.hparams.input_length

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        return self.net(series)

    def training_step(self, batch, batch_idx):
        loss = LOSSES[self.hparams.loss](self(batch["series"]), batch["target"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["series"]))
        return loss

    def _evaluate(self, batch, metrics: MetricCollection) -> torch.Tensor:
        forecast = self(batch["series"])
        metrics.update(forecast.flatten(), batch["target"].flatten())
        self.log_dict(metrics, prog_bar=True, batch_size=len(forecast))
        return forecast

    def validation_step(self, batch, batch_idx):
        forecast = self._evaluate(batch, self.val_metrics)
        loss = LOSSES[self.hparams.loss](forecast, batch["target"])
        self.log("val_loss", loss, batch_size=len(forecast))

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx):
        return self.predict(batch["series"])

    @torch.no_grad()
    def forecast_values(self, windows: np.ndarray) -> np.ndarray:
        """``(B, H, C)`` for windows ``(B, L, C)`` in the data's units."""
        series = torch.from_numpy(np.asarray(windows, dtype=np.float32)).to(self.device)
        return self.net.forecast(series).float().cpu().numpy()


def window_forecast(task: ForecastingTask, data_dir: str, split: str = "test", window: int = 0) -> dict:
    """Window ``window`` of ``split`` of the data ``task`` was trained on: the history and truth (the
    data's units), the task's forecast record, and its MSE/MAE on the scaled values."""
    from datamodules.ett import ETTDataModule

    data = ETTDataModule.of_model(data_dir, dict(task.hparams))
    windows = data.windows(split, scaled=False)
    if not 0 <= window < len(windows):
        raise ValueError(f"--window must be in [0, {len(windows)}): the {split} split has {len(windows)} windows")
    item = windows[window]
    (record,) = task.predict([item["series"].tolist()])
    error = (np.asarray(record["forecast"]) - item["target"].numpy()) / np.asarray(data.std)
    truth, history = item["target"].tolist(), item["series"].tolist()
    return {
        "split": split, "window": window, **record, "truth": truth, "history": history,
        "mse": float((error**2).mean()), "mae": float(np.abs(error).mean()),
    }  # fmt: skip


def save_forecast_plot(result: dict, column: str, path: str) -> None:
    """History, truth and forecast of one column of a ``window_forecast`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if column not in result["columns"]:
        raise ValueError(f"no column {column!r}; the model forecasts {', '.join(result['columns'])}")
    c = result["columns"].index(column)
    history = [row[c] for row in result["history"][-4 * len(result["truth"]) :]]  # the recent past, to read it
    truth, forecast = [row[c] for row in result["truth"]], [row[c] for row in result["forecast"]]
    future = range(len(history), len(history) + len(truth))
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(range(len(history)), history, color="0.45", linewidth=1, label="history")
    ax.plot(future, truth, color="tab:blue", linewidth=1.2, label="truth")
    ax.plot(future, forecast, color="tab:orange", linewidth=1.5, label="forecast")
    ax.axvline(len(history) - 0.5, color="0.7", linestyle=":")
    title = f"{column}, {result['split']} window {result['window']}"
    ax.set(xlabel="row (hour) of the drawn part", ylabel=column, title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
