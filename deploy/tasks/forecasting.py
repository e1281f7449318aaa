"""Forecasting served without torch: the predictor, the ``/v1`` request and the v2 tensors."""

from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, Field

from deploy import signatures as names
from deploy.open_inference import Output, Tensors, values_of
from deploy.runtime import Predictor
from deploy.serving import TaskAPI
from zoo.common.formats import CONFIG_FILE, ExportConfig, FormatError

# Windows per onnxruntime call (a 720 x 7 window is 20 KB).
WINDOWS = 256


class ForecasterPredictor(Predictor):
    """The forecast of windows in the data's units (the graph scales them as the network was trained)."""

    def __init__(self, folder: Path, config: ExportConfig, threads: int | None = None, memory_arena: bool = True):
        super().__init__(folder, config, threads, memory_arena)
        graph = config.graphs["model.onnx"]
        shapes = [value.shape for value in (*graph.inputs, *graph.outputs)]
        fixed = all(len(shape) == 3 and all(isinstance(size, int) for size in shape[1:]) for shape in shapes)
        if not config.columns or len(shapes) != 2 or not fixed or shapes[0][2] != len(config.columns):
            raise FormatError(f"{folder / CONFIG_FILE}: a forecasting export needs its columns, one per input column")
        self.input_length, self.horizon = shapes[0][1], shapes[1][1]

    @property
    def columns(self) -> list[str]:
        return self.config.columns

    def description(self) -> dict:
        return {"columns": self.columns, "input_length": self.input_length, "horizon": self.horizon}

    def forecast(self, series: list, budget: int = WINDOWS) -> list[dict]:
        """``[{"columns", "forecast"}]`` per window (``zoo.common.predict.forecasting.Forecast``); a window is
        ``input_length`` rows of one number per column, in the data's units."""
        return self.predict(series, budget=budget)

    def forecast_values(self, windows: np.ndarray, budget: int = WINDOWS) -> np.ndarray:
        """``(B, H, C)`` for windows ``(B, L, C)``, in calls of at most ``budget`` windows."""
        session = self.sessions["model.onnx"]
        calls = [windows[start : start + budget] for start in range(0, len(windows), budget)]
        return np.concatenate([session.run([names.FORECAST], {names.SERIES: call})[0] for call in calls])


FiniteNumber = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class ForecastRequest(BaseModel):
    series: list[list[list[FiniteNumber]]] = Field(
        min_length=1, description="windows, each the model's input_length rows of one number per column"
    )


# A window's shape and values are checked by the task's predict (a 422 that names the window).
API = TaskAPI(ForecastRequest, "series", texts=False)
TENSORS = Tensors(
    "series",
    "FP32",
    {"forecast": Output("FP32", values_of("forecast"), lambda p: [-1, p.horizon, len(p.columns)])},
    lambda p: [-1, p.input_length, len(p.columns)],
)
