"""Forecasting: the ETT protocol's borders and scaling, the forecasters, training, export, the runtime."""

import json

import numpy as np
import pytest
import torch

from datamodules.ett import ETTDataModule, split_rows
from datamodules.loading import DataError
from tests.conftest import shared_dataset
from zoo.networks.forecaster import Forecaster

ROWS = 14_500  # the benchmark reads the first 14,400


def write_csv(folder, rows: int = ROWS, columns=("HUFL", "OT"), name: str = "ETTh1") -> None:
    """Column k of row r holds ``10 r + k``, so a window's values say which rows it holds."""
    lines = ["date," + ",".join(columns)]
    lines += [f"2016-07-01 00:00:00,{','.join(str(10 * r + k) for k in range(len(columns)))}" for r in range(rows)]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def ett_dir(tmp_path):
    write_csv(tmp_path)
    return tmp_path


def rows_of(window: torch.Tensor) -> list[int]:
    """The rows a raw window holds (column 0 is ``10 r``)."""
    return (window[:, 0] / 10).round().int().tolist()


def test_the_splits_start_and_end_at_the_benchmarks_borders_and_keep_every_window(ett_dir):
    data = ETTDataModule(str(ett_dir), input_length=48, horizon=24, eval_batch_size=100)
    assert data.columns == ["HUFL", "OT"]
    expected = {  # (windows, first input row, first target row, last target row)
        "train": (8640 - 48 - 24 + 1, 0, 48, 8639),
        "validation": (2880 - 24 + 1, 8640 - 48, 8640, 11519),
        "test": (2880 - 24 + 1, 11520 - 48, 11520, 14399),
    }
    for split, (count, first_input, first_target, last_target) in expected.items():
        windows = data.windows(split, scaled=False)
        assert len(windows) == count, split
        assert rows_of(windows[0]["series"])[0] == first_input
        assert rows_of(windows[0]["target"])[0] == first_target
        assert rows_of(windows[count - 1]["target"])[-1] == last_target
        assert rows_of(windows[5]["series"]) == list(range(first_input + 5, first_input + 5 + 48))
    batches = list(data.test_dataloader())
    assert sum(len(batch["series"]) for batch in batches) == 2857 and len(batches[-1]["series"]) == 57  # no drop_last
    assert split_rows("train", 720) == (0, 8640) and split_rows("test", 720) == (11520 - 720, 14400)


def test_every_column_is_scaled_with_the_train_rows_mean_and_population_deviation(ett_dir):
    data = ETTDataModule(str(ett_dir), input_length=48, horizon=24)
    n = 8640  # rows 0..8639: mean (n - 1) / 2, population deviation sqrt((n^2 - 1) / 12), times 10
    assert data.mean == pytest.approx([10 * (n - 1) / 2, 10 * (n - 1) / 2 + 1])
    assert data.std == pytest.approx([10 * np.sqrt((n**2 - 1) / 12)] * 2)
    scaled = data.windows("test")[0]["series"][0]
    assert scaled.tolist() == pytest.approx([(10 * (11520 - 48) + k - data.mean[k]) / data.std[k] for k in (0, 1)])
    univariate = ETTDataModule(str(ett_dir), input_length=48, horizon=24, features="S", target="OT")
    assert univariate.columns == ["OT"] and univariate.mean == pytest.approx([data.mean[1]])


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="ETTh1.csv does not exist"):
        _ = ETTDataModule(str(tmp_path)).raw_values
    write_csv(tmp_path, rows=1000)
    with pytest.raises(DataError, match="has 1000 rows; the benchmark's splits need 14400"):
        _ = ETTDataModule(str(tmp_path)).raw_values
    write_csv(tmp_path, columns=("HUFL", "load"))
    with pytest.raises(DataError, match="no column 'OT'"):
        _ = ETTDataModule(str(tmp_path)).columns
    with pytest.raises(ValueError, match="features must be 'M'"):
        ETTDataModule(str(tmp_path), features="MS")


def test_the_hub_path_fails_offline_with_what_to_do():
    import os
    import subprocess
    import sys

    code = "from datamodules.ett import ETTDataModule; ETTDataModule().prepare_data()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0
    assert "DataError: could not read hf://datasets/zhouhaoyi/ETDataset/ETT-small/ETTh1.csv" in run.stderr
    assert "pass a local folder holding ETTh1.csv" in run.stderr


def test_the_real_ett_files_give_the_benchmarks_windows():
    data = ETTDataModule(str(shared_dataset("ett")), input_length=720, horizon=96)
    assert data.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert [len(data.windows(split)) for split in ("train", "validation", "test")] == [7825, 2785, 2785]
    train = data.windows("train")
    values = torch.cat([train[0]["series"], *(train[i]["target"][-1:] for i in range(len(train)))])
    assert values.mean(0).abs().max() < 0.2  # scaled by the train rows: about mean 0 there


@pytest.mark.parametrize(
    "options",
    [
        {"model": "segrnn", "segment_length": 4, "cell": "gru"},
        {"model": "segrnn", "segment_length": 4, "cell": "lstm", "normalization": "revin"},
        {"model": "segrnn", "segment_length": 8, "cell": "mingru", "num_layers": 2},
        {"model": "rnn", "cell": "lstm", "normalization": "revin"},
        {"model": "dlinear", "normalization": "none", "kernel_size": 5},
        {"model": "repeat_last"},
    ],
    ids=lambda options: "-".join(str(v) for v in options.values()),
)
def test_every_forecaster_maps_a_window_to_the_next_rows_in_both_units(options):
    torch.manual_seed(0)
    network = Forecaster(16, 8, 3, hidden_size=6, mean=[1.0, 2.0, 3.0], std=[2.0, 1.0, 0.5], **options).eval()
    series = torch.randn(5, 16, 3)
    forecast = network.forecast(series)
    assert forecast.shape == (5, 8, 3)
    scaled = network((series - network.mean) / network.std)
    torch.testing.assert_close(forecast, scaled * network.std + network.mean)
    # Each window is forecast on its own: a batch gives what each window alone gives.
    torch.testing.assert_close(network.forecast(series[2:3]), forecast[2:3], atol=1e-5, rtol=1e-5)
    if options["model"] == "repeat_last":
        torch.testing.assert_close(forecast, series[:, -1:].expand(-1, 8, -1))


def test_dlinear_splits_each_column_into_a_centred_moving_average_and_the_rest():
    network = Forecaster(6, 2, 1, model="dlinear", normalization="none", kernel_size=3)
    with torch.no_grad():
        network.core.trend.weight.copy_(torch.eye(6)[:2])  # forecast = trend[0:2] + 10 x remainder[0:2]
        network.core.remainder.weight.copy_(10 * torch.eye(6)[:2])
        network.core.trend.bias.zero_()
        network.core.remainder.bias.zero_()
    series = torch.tensor([3.0, 0.0, 3.0, 6.0, 0.0, 6.0]).view(1, 6, 1)
    trend = [(3 + 3 + 0) / 3, (3 + 0 + 3) / 3]  # the first row repeated before it
    expected = [t + 10 * (x - t) for t, x in zip(trend, (3.0, 0.0), strict=True)]
    assert network(series).flatten().tolist() == pytest.approx(expected)


def test_an_ensemble_forecasts_the_mean_of_its_members_and_exports_as_one_graph(tmp_path):
    import deploy
    from deploy.export import export
    from zoo.networks.ensemble import ForecasterEnsemble
    from zoo.storage.pretrained import save_pretrained

    torch.manual_seed(0)
    sizes = {"input_length": 8, "horizon": 4, "channels": 2, "hidden_size": 4, "segment_length": 4}
    arguments = [{**sizes, "mean": [1.0, 2.0], "std": [2.0, 3.0], "model": model} for model in ("segrnn", "dlinear")]
    members = [Forecaster(**member).eval() for member in arguments]
    ensemble = ForecasterEnsemble.from_networks(members, arguments)
    series = torch.randn(3, 8, 2)
    expected = (members[0].forecast(series) + members[1].forecast(series)) / 2
    torch.testing.assert_close(ensemble.forecast(series), expected)
    task_arguments = {"columns": ["a", "b"], "input_length": 8, "horizon": 4, "mean": [1.0, 2.0], "std": [2.0, 3.0]}
    folder = save_pretrained(tmp_path / "ensemble", ensemble, arguments={"members": arguments},
                             task_arguments=task_arguments, tokenizers={})  # fmt: skip
    export(folder, tmp_path / "export")
    got = deploy.load(tmp_path / "export").forecast_values(series.numpy())
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="trained on the same data"):
        ForecasterEnsemble([arguments[0], {**arguments[1], "mean": [0.0, 0.0]}])


def test_bad_forecaster_options_are_refused():
    with pytest.raises(ValueError, match="horizon 10 is not a multiple of segment_length 4"):
        Forecaster(16, 10, 2, segment_length=4)
    with pytest.raises(ValueError, match="unknown model 'transformer'"):
        Forecaster(16, 8, 2, model="transformer")
    with pytest.raises(ValueError, match="std must be > 0"):
        Forecaster(16, 8, 2, model="dlinear", std=[1.0, 0.0])
    with pytest.raises(ValueError, match="mean has 3 values for 2 columns"):
        Forecaster(16, 8, 2, model="dlinear", mean=[0.0, 0.0, 0.0])


def test_training_lowers_the_loss_and_tests_every_window(ett_dir, tmp_path):
    import lightning as L

    from lightning_modules.forecasting import ForecastingTask

    torch.manual_seed(0)
    data = ETTDataModule(str(ett_dir), input_length=48, horizon=24, batch_size=32, max_samples=256)
    task = ForecastingTask(
        data.columns, 48, 24, data.mean, data.std, "ETTh1", model="dlinear", normalization="none", kernel_size=5
    )
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=0.01)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    before = trainer.test(task, data, verbose=False)[0]
    trainer.fit(task, data)
    after = trainer.test(task, data, verbose=False)[0]
    assert after["test_mse"] < before["test_mse"] / 10 and set(after) == {"test_mse", "test_mae"}
    (record,) = task.predict([data.windows("test", scaled=False)[0]["series"].tolist()])
    assert record["columns"] == ["HUFL", "OT"] and np.shape(record["forecast"]) == (24, 2)


def test_a_model_with_nothing_to_train_says_so(ett_dir):
    import lightning as L

    from lightning_modules.forecasting import ForecastingTask

    data = ETTDataModule(str(ett_dir), input_length=24, horizon=24, max_samples=64)
    task = ForecastingTask(data.columns, 24, 24, data.mean, data.std, model="repeat_last")
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters())  # as `rnnzoo fit` adds one
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="has no weights to train: evaluate it with `rnnzoo test`"):
        trainer.fit(task, data)


@pytest.fixture(scope="module")
def forecaster_export(tmp_path_factory):
    from deploy.export import export
    from zoo.storage.pretrained import save_pretrained

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("forecast")
    task_arguments = {"columns": ["a", "OT"], "input_length": 16, "horizon": 8, "mean": [3.0, 20.0], "std": [2.0, 5.0]}
    arguments = {"input_length": 16, "horizon": 8, "channels": 2, "mean": [3.0, 20.0], "std": [2.0, 5.0]}
    arguments |= {"hidden_size": 8, "segment_length": 4}
    network = Forecaster(**arguments).eval()
    folder = save_pretrained(
        root / "pretrained", network, arguments=arguments, task_arguments=task_arguments, tokenizers={}
    )
    config = export(folder, root / "export")
    return network, root / "export", config


def test_the_export_is_one_graph_that_forecasts_what_the_network_does(forecaster_export):
    import deploy

    network, folder, config = forecaster_export
    assert set(config.graphs) == {"model.onnx"} and config.columns == ["a", "OT"]
    assert config.verification["model.onnx"]["max_abs_diff"] < 1e-4
    predictor = deploy.load(folder)
    assert (predictor.task, predictor.input_length, predictor.horizon) == ("forecasting", 16, 8)
    windows = np.random.default_rng(0).normal([3.0, 20.0], [2.0, 5.0], (300, 16, 2)).astype(np.float32)
    expected = network.forecast(torch.from_numpy(windows)).detach().numpy()
    np.testing.assert_allclose(predictor.forecast_values(windows, budget=64), expected, atol=1e-4)
    records = predictor.forecast(windows[:2].tolist())
    assert [record["columns"] for record in records] == [["a", "OT"]] * 2
    np.testing.assert_allclose(records[1]["forecast"], expected[1], atol=1e-3)


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ([[[1.0, 2.0]] * 15], r"window 0 has shape \[15, 2\]; this model reads 16 rows of 2 values \(a, OT\)"),
        ([[[1.0, 2.0]] * 16, [[1.0, 2.0, 3.0]] * 16], r"window 1 has shape \[16, 3\]"),
        ([[[1.0, 2.0]] * 17], r"window 0 has shape \[17, 2\]"),  # a longer history is refused, not cut
        ([[[1.0, float("nan")]] * 16], "NaN, infinite or beyond float32"),
        ([[[1.0, 1e300]] * 16], "NaN, infinite or beyond float32"),
        ([[[1.0, "x"]] * 16], "window 0 is not a table of numbers"),
        ([[[1.0], [1.0, 2.0]]], "window 0 is not a table of numbers"),
        ([], "give a list of windows"),
        ("1,2", "give a list of windows"),
    ],
)
def test_a_window_of_the_wrong_shape_or_values_is_refused_with_the_reason(forecaster_export, series, message):
    import deploy

    with pytest.raises(ValueError, match=message):
        deploy.load(forecaster_export[1]).forecast(series)


def test_export_parity_on_real_test_windows_and_the_forecast_command(tmp_path, capsys):
    """A briefly trained DLinear on ETTh1: `rnnzoo export --data_dir` compares onnxruntime and PyTorch on the
    test windows; `rnnzoo forecast` prints one window's forecast and draws it."""
    import lightning as L

    from lightning_modules.cli import main
    from lightning_modules.forecasting import ForecastingTask
    from lightning_modules.task_io import save_task

    ett = shared_dataset("ett")
    data = ETTDataModule(str(ett), input_length=96, horizon=24, max_samples=512)
    task = ForecastingTask(data.columns, 96, 24, data.mean, data.std, "ETTh1", model="dlinear", normalization="none")
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=0.005)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(task, data)
    save_task(task, tmp_path / "pretrained")
    main(["export", "--ckpt", str(tmp_path / "pretrained"), "--out", str(tmp_path / "export"), "--data_dir", str(ett)])
    parity = json.loads((tmp_path / "export" / "config.json").read_text())["parity"]
    assert parity["examples"] == 1000 and parity["max_abs_diff"] < 1e-3
    assert parity["onnx_mse"] == pytest.approx(parity["torch_mse"], rel=1e-4) and parity["onnx_mse"] < 1.0
    capsys.readouterr()
    main(["forecast", "--ckpt", str(tmp_path / "pretrained"), "--data_dir", str(ett), "--window", "7",
          "--png", str(tmp_path / "plot.png")])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert (result["window"], np.shape(result["forecast"]), np.shape(result["truth"])) == (7, (24, 7), (24, 7))
    assert result["mse"] > 0 and (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["forecast", "--ckpt", str(tmp_path / "pretrained"), "--data_dir", str(ett), "--window", "99999"])
    assert "--window must be in [0, 2857)" in capsys.readouterr().err
