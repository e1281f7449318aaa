"""CUDA: the recurrent stack and every task against CPU float64, mixed-precision training, DDP over NCCL,
checkpoints and the ONNX export of a GPU-trained model. ``pytest -m gpu`` on a machine with a GPU.

Skipped where CUDA is absent. ``RNNZOO_TEST_DEVICE=cpu`` runs the same checks on the CPU (gloo for
DDP, no float16), to check the tests themselves on a machine without a GPU.
"""

import copy
import os

import pytest
import torch

from tests.conftest import PTB_CONFIG, rnnzoo, shared_dataset
from tests.test_distillation import CASES
from zoo.cells.recurrent import CELLS, RecurrentStack
from zoo.networks.attention import Attention
from zoo.networks.crf import CRF

DEVICE = os.environ.get("RNNZOO_TEST_DEVICE", "cuda")
ACCELERATOR = "gpu" if DEVICE == "cuda" else "cpu"
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"] if DEVICE == "cuda" else ["32-true", "bf16-mixed"]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(autouse=True)
def exact_float32():
    """Float32 kernels, not TF32, so that the GPU can be held to CPU float64 tightly."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def forward_and_gradients(module, run, inputs, weights):
    """``run(module, *inputs)``'s output and the gradients of ``(output * weights).sum()``."""
    module.zero_grad()
    output = run(module, *inputs)
    (output * weights).sum().backward()
    grads = {name: p.grad.cpu().double() for name, p in module.named_parameters() if p.grad is not None}
    return output.detach().cpu().double(), grads


def assert_matches_float64(module, run, inputs: tuple, atol: float = 2e-4):
    """``module`` on ``DEVICE`` in float32 gives the outputs and gradients of its float64 copy on the CPU."""
    reference = copy.deepcopy(module).double().cpu()
    cpu_inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    with torch.no_grad():
        weights = torch.randn_like(run(reference, *cpu_inputs))
    want, want_grads = forward_and_gradients(reference, run, cpu_inputs, weights)
    device_inputs = [x.to(DEVICE) for x in inputs]
    got, got_grads = forward_and_gradients(module.float().to(DEVICE), run, device_inputs, weights.float().to(DEVICE))
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-3)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=atol, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


LENGTHS = torch.tensor([7, 3, 5, 1, 7])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("bidirectional", "residual"), [(False, False), (True, False), (False, True)])
def test_every_cell_matches_cpu_float64_with_variable_lengths(cell, bidirectional, residual):
    torch.manual_seed(0)
    stack = RecurrentStack(6, 8, 2, cell, bidirectional, dropout=0.3, locked_dropout=True, residual=residual).eval()
    x = torch.randn(5, 7, 6)
    steps = torch.arange(7)[None, :, None] < LENGTHS[:, None, None]

    def run(module, x, lengths, valid):
        return module(x, lengths=lengths)[0] * valid  # padding steps hold no output to compare

    assert_matches_float64(stack, run, (x, LENGTHS, steps))


def test_locked_dropout_keeps_one_mask_per_sequence_on_the_device():
    stack = RecurrentStack(4, 4, 3, "lstm", dropout=0.5, locked_dropout=True).train().to(DEVICE)
    seen = []
    stack.layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    stack(torch.ones(2, 9, 4, device=DEVICE))
    dropped = seen[0] == 0  # (B, T, H): the same units at every step
    assert dropped.any() and (dropped == dropped[:, :1]).all()


@pytest.mark.parametrize("case", CASES)
def test_every_task_network_matches_cpu_float64(case, tmp_path):
    dm, build, logits = CASES[case](tmp_path)
    torch.manual_seed(0)
    net = build().net.eval()
    batch = next(iter(dm.train_dataloader()))
    tensors = batch if isinstance(batch, list | tuple) else {k: v for k, v in batch.items() if torch.is_tensor(v)}
    keys = range(len(tensors)) if isinstance(tensors, list | tuple) else list(tensors)

    def run(module, *values):
        output, mask = logits(module, dict(zip(keys, values, strict=True)) if isinstance(keys, list) else values)
        return output if mask is None else output * mask.unsqueeze(-1)

    assert_matches_float64(net, run, tuple(tensors[k] for k in keys), atol=5e-4)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_task_trains_in_every_precision(case, precision, tmp_path):
    """30 steps on the first batch of each epoch: the loss stays finite and falls."""
    import lightning as L

    dm, build, _ = CASES[case](tmp_path)
    torch.manual_seed(0)
    task = build()
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=0.01)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        accelerator=ACCELERATOR,
        devices=1,
        precision=precision,
        max_steps=30,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Record()],
    )
    trainer.fit(task, datamodule=dm)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-5:]) < 0.95 * sum(losses[:5]), losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.bfloat16])
def test_crf_and_attention_are_safe_under_autocast(dtype):
    torch.manual_seed(0)
    crf = CRF(9).to(DEVICE)
    emissions = (10 * torch.randn(4, 60, 9, device=DEVICE)).requires_grad_()
    tags, mask = torch.randint(0, 9, (4, 60), device=DEVICE), torch.rand(4, 60, device=DEVICE) > 0.1
    mask[:, 0] = True
    with torch.autocast(DEVICE, dtype=dtype):
        nll, path = crf(emissions.to(dtype), tags, mask), crf.decode(emissions.to(dtype), mask)
    want = crf(emissions.to(dtype).float(), tags, mask)
    assert torch.isfinite(nll) and torch.allclose(nll.float(), want, rtol=1e-3)
    assert torch.equal(path, crf.decode(emissions.to(dtype).float(), mask))
    nll.backward()
    assert torch.isfinite(emissions.grad).all()

    attention = Attention("bahdanau", 16, 16).to(DEVICE)
    query, memory = 30 * torch.randn(2, 5, 16, device=DEVICE), 30 * torch.randn(2, 11, 16, device=DEVICE)
    source_mask = torch.arange(11, device=DEVICE)[None] < torch.tensor([[11], [4]], device=DEVICE)
    with torch.autocast(DEVICE, dtype=dtype):
        context, weights = attention(query, attention.keys(memory), memory, source_mask)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(2, 5, device=DEVICE), atol=1e-2, rtol=0)
    assert (weights[1, :, 4:] == 0).all()


def test_ptb_fit_ddp_resume_and_cpu_export_of_a_gpu_checkpoint(tmp_path):
    """``rnnzoo fit`` on the real PTB under DDP (NCCL on a GPU, world size 1) in bf16-mixed, resumed from
    ``last.ckpt``; the GPU-trained checkpoint then exports to ONNX on the CPU and passes its parity check."""
    ptb = str(shared_dataset("ptb"))
    common = ["--config", str(PTB_CONFIG), "--data.data_dir", ptb, "--trainer.enable_progress_bar", "false"]
    device = f"--trainer.accelerator {ACCELERATOR} --trainer.devices 1 --trainer.strategy ddp".split()
    mixed = [*device, "--trainer.precision", "bf16-mixed", "--trainer.limit_val_batches", "20"]
    steps = ["--trainer.max_steps", "300", "--trainer.val_check_interval", "150"]
    fitted = rnnzoo(tmp_path, "fit", *common, *mixed, *steps)
    assert f"distributed_backend={'nccl' if DEVICE == 'cuda' else 'gloo'}" in fitted.stdout + fitted.stderr
    last = tmp_path / "checkpoints" / "ptb_lstm_small" / "last.ckpt"
    resumed = ["--trainer.max_steps", "400", "--ckpt_path", "last"]
    rnnzoo(tmp_path, "fit", *common, *mixed, "--trainer.val_check_interval", "100", *resumed)
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 400
    scores = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]
    assert float(scores) < 1000  # validation perplexity (10,000 words) after 400 bf16 steps: learning

    cpu_only = {"CUDA_VISIBLE_DEVICES": ""}
    exported = rnnzoo(tmp_path, "export", "--ckpt", str(last), "--out", str(tmp_path / "onnx"), env=cpu_only)
    assert "max |onnxruntime - torch|" in exported.stdout and (tmp_path / "onnx" / "model.onnx").is_file()
    few = ["--trainer.limit_test_batches", "20"]
    tested = rnnzoo(tmp_path, "test", *common, *few, "--ckpt_path", str(last), env=cpu_only)
    assert "test_ppl" in tested.stdout
