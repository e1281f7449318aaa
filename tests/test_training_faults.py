"""Training faults on the first rows of the real Penn Treebank: a NaN loss stops the run cleanly,
and a run killed in the middle of an epoch resumes to the same result as an uninterrupted one."""

import json
import math

import pytest
import torch

from lightning_modules.task_io import read_checkpoint
from tests.conftest import PTB_CONFIG, QUICK, REPO, rnnzoo

STEP_CHECKPOINTS = (
    "--trainer.callbacks+=ModelCheckpoint --trainer.callbacks.dirpath checkpoints/ptb_lstm_small "
    "--trainer.callbacks.every_n_train_steps 3 --trainer.callbacks.save_top_k 0 --trainer.callbacks.save_last true"
).split()
FIT = [
    "fit",
    "--config",
    str(PTB_CONFIG),
    *QUICK,
    "--trainer.limit_val_batches",
    "3",
    "--model.init_args.dropout",
    "0.3",
]


def fit(cwd, ptb_dir, *extra, check=True):
    return rnnzoo(
        cwd,
        *FIT,
        "--data.data_dir",
        str(ptb_dir),
        *STEP_CHECKPOINTS,
        *extra,
        check=check,
        env={"PYTHONPATH": str(REPO)},
    )


def last_checkpoint(cwd) -> dict:
    return read_checkpoint(cwd / "checkpoints" / "ptb_lstm_small" / "last.ckpt")


@pytest.mark.parametrize(
    ("fault", "step", "message", "kept_step"),
    [
        # a NaN loss: stopped before its update; the step checkpoint before it is kept
        ("PoisonAtStep", 7, "training stopped at step 7 (epoch 0): the loss is nan", 6),
        # a finite loss whose update overflows: stopped before that step's checkpoint is written
        ("OverflowAtStep", 6, "training stopped at step 6 (epoch 0): 1 weight tensors hold NaN or infinite", 3),
    ],
    ids=["nan-loss", "overflowing-update"],
)
def test_a_non_finite_loss_or_update_stops_training_and_keeps_finite_weights(
    tmp_path, ptb_dir, fault, step, message, kept_step
):
    callback = json.dumps({"class_path": f"tests.callbacks.{fault}", "init_args": {"step": step}})
    result = fit(tmp_path, ptb_dir, "--trainer.max_epochs", "1", f"--trainer.callbacks+={callback}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"rnnzoo: {message}")
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["global_step"] == kept_step  # not overwritten
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["state_dict"].values())


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path, ptb_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fit(tmp_path / "a", ptb_dir, "--trainer.max_epochs", "2")
    expected = last_checkpoint(tmp_path / "a")
    steps_per_epoch = expected["global_step"] // 2
    kill_at = steps_per_epoch + 4  # the second epoch's first step checkpoint is behind it
    assert kill_at % 3 != 0 and kill_at // 3 * 3 > steps_per_epoch

    killer = json.dumps({"class_path": "tests.callbacks.KillAtStep", "init_args": {"step": kill_at}})
    killed = fit(tmp_path / "b", ptb_dir, "--trainer.max_epochs", "2", f"--trainer.callbacks+={killer}", check=False)
    assert killed.returncode == -9
    assert last_checkpoint(tmp_path / "b")["global_step"] == kill_at // 3 * 3  # saved mid-epoch

    fit(tmp_path / "b", ptb_dir, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    resumed = last_checkpoint(tmp_path / "b")
    assert resumed["global_step"] == expected["global_step"]
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], tensor, rtol=1e-5, atol=1e-6)
    scores = [
        next(s["best_model_score"] for k, s in c["callbacks"].items() if "val_ppl" in k) for c in (expected, resumed)
    ]
    assert math.isclose(float(scores[0]), float(scores[1]), rel_tol=1e-5)
