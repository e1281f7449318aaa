"""Forecasting's records and options, and its predict: windows of a series in the data's units -> the next rows."""

from dataclasses import dataclass
from typing import TypedDict

import numpy as np


class Forecast(TypedDict):
    columns: list[str]  # the series' columns, in the order of each row
    forecast: list[list[float]]  # the next ``horizon`` rows, in the data's units (4 decimals)


@dataclass(frozen=True)
class ForecastOptions:
    pass


def forecast(model, series: list, options: ForecastOptions, **limits) -> list[Forecast]:
    """Each window (``input_length`` rows of one number per column, the data's units) -> the next rows."""
    windows = check_windows(series, model.input_length, model.columns)
    values = model.forecast_values(windows, **limits)
    overflowed = [i for i, forecast in enumerate(values) if not np.isfinite(forecast).all()]
    if overflowed:  # float32 inputs near its limit can overflow inside the network: no number to answer
        raise ValueError(f"windows {overflowed} have forecasts beyond float32 (their values are too large)")
    return [{"columns": model.columns, "forecast": np.round(v.astype(np.float64), 4).tolist()} for v in values]


def check_windows(series: list, input_length: int, columns: list[str]) -> np.ndarray:
    """``(B, L, C)`` float32 of the windows, or a ``ValueError`` that says which window is wrong and why."""
    if isinstance(series, str | bytes | np.ndarray) or not isinstance(series, list | tuple) or not series:
        raise ValueError("give a list of windows, each a list of rows of numbers")
    expected = (input_length, len(columns))
    windows = []
    for i, window in enumerate(series):
        try:
            values = np.asarray(window, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"window {i} is not a table of numbers (rows of the same length)") from None
        if values.shape != expected:
            raise ValueError(
                f"window {i} has shape {list(values.shape)}; this model reads {input_length} rows of "
                f"{len(columns)} values ({', '.join(columns)})"
            )
        if not np.isfinite(values).all() or not (np.abs(values) < np.finfo(np.float32).max).all():
            raise ValueError(f"window {i} has values that are NaN, infinite or beyond float32")
        windows.append(values)
    return np.stack(windows).astype(np.float32)
