"""Many-to-many over time: multivariate forecasters (a window of past rows -> the next ``horizon`` rows).

``Forecaster`` holds the data's scaling (the train rows' mean and standard deviation per column) and
one of four models, all direct multi-horizon (every future row at once, no feedback of forecasts):

- ``segrnn``: the segment recurrence of Lin et al. (2023), "SegRNN: Segment Recurrent Neural
  Network for Long-Term Time Series Forecasting" (arXiv:2308.11200). Each column on its own: the
  window is cut into segments of ``segment_length`` steps, each embedded linearly, and one recurrent
  pass reads the segments; the future segments are then decoded in parallel by one more step of the
  same recurrence from that state, each step's input saying which segment (a position embedding)
  of which column (a column embedding) it is.
- ``rnn``: a recurrent stack over the window's rows, its last output projected to every future row.
- ``dlinear``: DLinear (Zeng et al. 2023, "Are Transformers Effective for Time Series
  Forecasting?"): a moving average splits each column into trend and remainder, and a linear map
  over time per part gives the forecast.
- ``repeat_last``: the last value of each column, repeated (the naive baseline; nothing to train).

``normalization`` is applied per window around the model: ``last`` subtracts each column's last
value and adds it back (SegRNN's and NLinear's choice), ``revin`` is reversible instance
normalisation (Kim et al. 2022: each window's mean and deviation, with a learned affine map).
"""

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from zoo.cells.recurrent import CellType, RecurrentStack

ForecastModel = Literal["segrnn", "rnn", "dlinear", "repeat_last"]
FORECAST_MODELS = ("segrnn", "rnn", "dlinear", "repeat_last")
Normalization = Literal["none", "last", "revin"]
NORMALIZATIONS = ("none", "last", "revin")


class RevIN(nn.Module):
    """Reversible instance normalisation: ``normalize`` each window's columns to mean 0 and deviation 1
    (then a learned scale and shift per column); ``restore`` undoes both on the forecast."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        mean = x.mean(1, keepdim=True)  # (B, 1, C)
        std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps)
        return (x - mean) / std * self.weight + self.bias, (mean, std)

    def restore(self, y: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mean, std = statistics
        return (y - self.bias) / (self.weight + self.eps**2) * std + mean


class SegmentRNN(nn.Module):
    """SegRNN's encoder and parallel multi-step decoder, every column read alone (channel independence)."""

    def __init__(self, input_length, horizon, channels, hidden_size, segment_length, num_layers, cell, dropout):
        super().__init__()
        for name, length in (("input_length", input_length), ("horizon", horizon)):
            if length % segment_length:
                raise ValueError(f"{name} {length} is not a multiple of segment_length {segment_length}")
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even (half position, half column embedding), got {hidden_size}")
        self.segment_length = segment_length
        self.output_segments = horizon // segment_length
        self.embed = nn.Sequential(nn.Linear(segment_length, hidden_size), nn.ReLU())
        self.rnn = RecurrentStack(hidden_size, hidden_size, num_layers, cell)
        self.position = nn.Parameter(torch.randn(self.output_segments, hidden_size // 2))
        self.column = nn.Parameter(torch.randn(channels, hidden_size // 2))
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden_size, segment_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        w, m = self.segment_length, self.output_segments
        segments = x.transpose(1, 2).reshape(batch * channels, -1, w)  # (B*C, N, w)
        _, state = self.rnn(self.embed(segments))  # (layers, B*C, H)
        queries = torch.cat(
            [self.position.unsqueeze(0).expand(channels, -1, -1), self.column.unsqueeze(1).expand(-1, m, -1)], -1
        )  # (C, M, H): which future segment of which column
        queries = queries.unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * channels * m, 1, -1)
        # Every future segment starts from the encoder's state: one step of the same recurrence each,
        # all at once (the decoding is parallel, not fed its own forecasts).
        state = _repeat_rows(state, m)
        out, _ = self.rnn(queries, state)  # (B*C*M, 1, H)
        y = self.project(self.dropout(out))  # (B*C*M, 1, w)
        return y.reshape(batch, channels, m * w).transpose(1, 2)  # (B, H, C)


def _repeat_rows(state, times: int):
    if isinstance(state, tuple):
        return tuple(_repeat_rows(s, times) for s in state)
    return state.repeat_interleave(times, dim=1)


class DirectRNN(nn.Module):
    """A recurrent stack over the window's rows; its last output -> all ``horizon`` future rows."""

    def __init__(self, input_length, horizon, channels, hidden_size, num_layers, cell, dropout):
        super().__init__()
        self.horizon, self.channels = horizon, channels
        self.rnn = RecurrentStack(channels, hidden_size, num_layers, cell, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden_size, horizon * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, L, H)
        return self.project(self.dropout(out[:, -1])).view(-1, self.horizon, self.channels)


class DLinear(nn.Module):
    """Trend (a centred moving average, the ends repeated) and remainder, each mapped over time by one
    linear layer shared by the columns."""

    def __init__(self, input_length, horizon, kernel_size):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 (a centred average), got {kernel_size}")
        self.kernel_size = kernel_size
        self.trend = nn.Linear(input_length, horizon)
        self.remainder = nn.Linear(input_length, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        series = x.transpose(1, 2)  # (B, C, L)
        half = (self.kernel_size - 1) // 2
        padded = torch.cat([series[..., :1].expand(-1, -1, half), series, series[..., -1:].expand(-1, -1, half)], -1)
        trend = F.avg_pool1d(padded, self.kernel_size, stride=1)
        return (self.trend(trend) + self.remainder(series - trend)).transpose(1, 2)  # (B, H, C)


class RepeatLast(nn.Module):
    def __init__(self, horizon):
        super().__init__()
        self.horizon = horizon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:].expand(-1, self.horizon, -1)


class Forecaster(nn.Module):
    """A window ``(B, input_length, channels)`` -> the next ``(B, horizon, channels)`` rows.

    ``forward`` works in the scaled units the model trains and is evaluated in; ``forecast`` takes and
    gives the data's own units, scaling with ``mean`` and ``std`` (the train rows', per column).

    Args:
        input_length, horizon, channels: sizes set by the data.
        model: ``segrnn``, ``rnn``, ``dlinear`` or ``repeat_last`` (see the module's docstring).
        normalization: per window, around the model: ``none``, ``last`` or ``revin``.
        hidden_size, num_layers, cell: the recurrent stack of ``segrnn`` and ``rnn`` (any zoo cell).
        segment_length: ``segrnn``'s segment, which divides ``input_length`` and ``horizon``.
        dropout: before the output projection (and, for ``rnn``, between layers).
        kernel_size: ``dlinear``'s moving average.
        mean, std: the scaling, one value per column (default: none).
    """

    def __init__(
        self,
        input_length: int,
        horizon: int,
        channels: int,
        model: ForecastModel = "segrnn",
        normalization: Normalization = "last",
        hidden_size: int = 512,
        num_layers: int = 1,
        cell: CellType = "gru",
        segment_length: int = 24,
        dropout: float = 0.0,
        kernel_size: int = 25,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__()
        if model not in FORECAST_MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(FORECAST_MODELS)}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        for name, size in (("input_length", input_length), ("horizon", horizon), ("channels", channels)):
            if size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        self.input_length, self.horizon, self.channels = input_length, horizon, channels
        self.normalization = "none" if model == "repeat_last" else normalization  # it repeats values as they are
        self.revin = RevIN(channels) if self.normalization == "revin" else None
        if model == "segrnn":
            self.core = SegmentRNN(
                input_length, horizon, channels, hidden_size, segment_length, num_layers, cell, dropout
            )
        elif model == "rnn":
            self.core = DirectRNN(input_length, horizon, channels, hidden_size, num_layers, cell, dropout)
        elif model == "dlinear":
            self.core = DLinear(input_length, horizon, kernel_size)
        else:
            self.core = RepeatLast(horizon)
        for name, values in (("mean", mean or [0.0] * channels), ("std", std or [1.0] * channels)):
            if len(values) != channels:
                raise ValueError(f"{name} has {len(values)} values for {channels} columns")
            # Not in the state dict: the arguments that rebuild the network carry them.
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)
        if not all(value > 0 for value in std or [1.0]):
            raise ValueError(f"std must be > 0 for every column, got {std}")

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """``window`` ``(B, L, C)`` scaled -> forecast ``(B, H, C)`` scaled."""
        if self.normalization == "last":
            last = window[:, -1:].detach()
            return self.core(window - last) + last
        if self.normalization == "revin":
            normalized, statistics = self.revin.normalize(window)
            return self.revin.restore(self.core(normalized), statistics)
        return self.core(window)

    def forecast(self, series: torch.Tensor) -> torch.Tensor:
        """``series`` ``(B, L, C)`` in the data's units -> the next ``(B, H, C)`` rows in the same units."""
        return self((series - self.mean) / self.std) * self.std + self.mean
