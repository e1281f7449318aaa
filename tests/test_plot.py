"""Training curves: the configs' CSV + TensorBoard logs in one run folder, and ``rnnzoo plot``."""

import pytest

from lightning_modules.cli import main
from lightning_modules.plot import panels, plot_curves, read_metrics
from tests.conftest import PTB_CONFIG, QUICK, rnnzoo, write_synthetic_corpus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The layout Lightning's CSVLogger writes: training, validation and learning-rate values on separate rows.
LOG = """epoch,lr-SGD,step,train_loss,train_ppl,val_loss,val_ppl
,1.0,0,,,,
0,,1,3.49,32.7,,
0,,3,3.81,45.0,,
0,,3,,,3.80,44.9
,0.5,4,,,,
1,,5,3.43,30.9,,
1,,7,,,3.37,29.0
"""


def run_folder(tmp_path, text: str = LOG):
    folder = tmp_path / "runs" / "ptb" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(text)
    return folder


def plot_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_fit_logs_csv_and_tensorboard_into_one_run_folder_that_plot_draws(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "corpus", {"train": 200, "validation": 40, "test": 40})
    options = "--trainer.max_epochs 2 --trainer.log_every_n_steps 1 --trainer.limit_val_batches 2".split()
    rnnzoo(tmp_path, "fit", "--config", str(PTB_CONFIG), "--data.data_dir", str(corpus), *QUICK, *options)
    runs = list((tmp_path / "runs" / "ptb_lstm_small").iterdir())
    assert [run.name for run in runs] == ["version_0"]  # not version_0 for one logger and version_1 for the other
    assert (runs[0] / "metrics.csv").is_file() and list(runs[0].glob("events.out.tfevents.*"))

    plotted = rnnzoo(tmp_path, "plot", "runs")  # the one run below runs/
    curves = runs[0] / "curves.png"
    assert f"wrote {curves.relative_to(tmp_path)}" in plotted.stdout
    assert curves.read_bytes()[:8] == PNG_SIGNATURE

    import matplotlib.image

    height, width, _ = matplotlib.image.imread(curves).shape
    assert width >= 800 and 600 <= height <= 1200  # three panels: loss, ppl, learning rate


def test_read_metrics_keeps_each_columns_logged_points(tmp_path):
    x_column, series = read_metrics(run_folder(tmp_path) / "metrics.csv")
    assert x_column == "step"
    assert series["train_loss"] == [(1, 3.49), (3, 3.81), (5, 3.43)]
    assert series["val_ppl"] == [(3, 44.9), (7, 29.0)]
    assert series["lr-SGD"] == [(0, 1.0), (4, 0.5)]


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (
            ["lr-SGD", "train_loss", "train_ppl", "val_loss", "val_ppl"],
            {"loss": ["train_loss", "val_loss"], "ppl": ["train_ppl", "val_ppl"], "learning rate": ["lr-SGD"]},
        ),
        (  # a classifier with an epoch-level training loss, tested afterwards, without LearningRateMonitor
            ["test_acc", "train_loss_epoch", "train_loss_step", "val_acc", "val_loss", "val_macro_f1"],
            {
                "loss": ["train_loss_epoch", "train_loss_step", "val_loss"],
                "acc": ["test_acc", "val_acc"],
                "macro_f1": ["val_macro_f1"],
            },
        ),
        (
            ["lr-Adam", "train_loss", "val_bleu"],
            {"loss": ["train_loss"], "bleu": ["val_bleu"], "learning rate": ["lr-Adam"]},
        ),
        (["val_f1", "val_token_acc"], {"f1": ["val_f1"], "token_acc": ["val_token_acc"]}),
    ],
)
def test_panels_draw_every_logged_column_once(columns, expected):
    assert panels(columns) == expected
    assert sorted(sum(expected.values(), [])) == sorted(columns)


def test_plot_writes_out_and_leaves_no_partial_png_on_failure(tmp_path, monkeypatch):
    folder = run_folder(tmp_path)
    out = plot_curves(folder, tmp_path / "mine.png")
    assert out == tmp_path / "mine.png" and out.read_bytes()[:8] == PNG_SIGNATURE

    from matplotlib.figure import Figure

    def fail_midway(self, path, **kwargs):
        open(path, "wb").write(PNG_SIGNATURE)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        plot_curves(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["metrics.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no logged values"),
        ("epoch,step,train_loss\n", "holds no logged values"),
        ("epoch,step,train_loss\n0,1,abc\n", "line 2 is not numbers"),
        ("loss,accuracy\n0.5,0.9\n", "neither a step nor an epoch column"),
    ],
)
def test_plot_rejects_a_bad_log_in_one_line(tmp_path, capsys, text, message):
    folder = run_folder(tmp_path, text)
    error = plot_error(capsys, str(folder))
    assert message in error and "Traceback" not in error
    assert not list(folder.glob("*.png")) and not list(folder.glob(".*"))


def test_plot_rejects_bad_folders_in_one_line(tmp_path, capsys):
    assert "is not a folder" in plot_error(capsys, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "no metrics.csv in" in plot_error(capsys, str(tmp_path / "empty"))
    folder = run_folder(tmp_path)
    assert "does not exist" in plot_error(capsys, str(folder), "--out", str(tmp_path / "nowhere" / "curves.png"))
    (tmp_path / "runs" / "ptb" / "version_1").mkdir()
    (tmp_path / "runs" / "ptb" / "version_1" / "metrics.csv").write_text(LOG)
    error = plot_error(capsys, str(tmp_path / "runs"))
    assert "holds 2 runs" in error and "version_0" in error and "version_1" in error
    assert not list(tmp_path.rglob("*.png"))
