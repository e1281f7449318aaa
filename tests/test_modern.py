"""Today's recurrences (zoo.cells.modern: mlstm, slstm, mamba2, rglru) and the residual MLP block.

The parallel (chunkwise) training forms against the step-by-step recurrences; each cell against a
literal transcription of its paper's equations, written here; state carried across calls, variable
lengths and both directions; ONNX export of language models and classifiers.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import deploy
from deploy.export import export
from tests.conftest import PTB_CONFIG, QUICK, pretrained_folder, rnnzoo
from tests.test_deploy import check_classifier_parity
from tests.test_minimal import recurrent_ops
from zoo import RecurrentStack, RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from zoo.cells.modern import MODERN_CELLS, ModernRecurrence
from zoo.cells.xlstm import MLSTMCell, SLSTMCell

CELLS = list(MODERN_CELLS)
PARALLEL = ["mlstm", "mamba2", "rglru"]  # the sLSTM reads h_{t-1} in its gates: it has only the loop
# Each cell's stack, and xLSTM's mixed [1:1] stack: an mLSTM layer, then an sLSTM layer.
STACKS = {cell: {"cell": cell} for cell in CELLS} | {"xlstm[1:1]": {"cell": "mlstm", "slstm_at": [1]}}


def small_chunks(module, size: int = 3):
    """Chunks of ``size`` steps, so that a short test sequence crosses several chunk boundaries."""
    for m in module.modules():
        if hasattr(m, "chunk_size"):
            m.chunk_size = size
    return module


def carried_state(layer, batch, features, generator):
    """The state an earlier call leaves (the parts of a packed state are not any random tensor)."""
    with torch.no_grad():
        return layer(torch.randn(batch, 4, features, dtype=torch.float64, generator=generator))[1]


@pytest.mark.parametrize("cell", PARALLEL)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("chunk", [3, 16])  # 16: longer than the sequence, which is then one chunk
def test_parallel_form_equals_the_step_loop_in_values_and_gradients(
    cell, with_lengths, bidirectional, chunk, monkeypatch
):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    batch, time, features, hidden = 3, 10, 5, 8
    layer = small_chunks(ModernRecurrence(cell, features, hidden, bidirectional, heads=2).double(), chunk)
    x = torch.randn(batch, time, features, dtype=torch.float64, generator=generator, requires_grad=True)
    lengths = torch.tensor([10, 4, 7]) if with_lengths else None
    state = carried_state(layer, batch, features, generator).requires_grad_()
    out_weight = torch.randn(batch, time, hidden * len(layer.directions), dtype=torch.float64, generator=generator)
    state_weight = torch.randn(state.shape, dtype=torch.float64, generator=generator)

    def outputs_and_gradients():
        out, final = layer(x, state, lengths)
        loss = (out * out_weight).sum() + (final * state_weight).sum()
        return out, final, *torch.autograd.grad(loss, [x, state, *layer.parameters()])

    parallel = outputs_and_gradients()
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # what selects the loop, gradients on
    for got, expected in zip(parallel, outputs_and_gradients(), strict=True):
        torch.testing.assert_close(got, expected)


# Each cell's equations as its paper writes them: no stabiliser, no chunks, no packing, one step at a
# time from the zero state, with the layer's parameters.


def mlstm_equations(cell, x):
    heads, d = cell.heads, cell.head_size
    q, k, v, o = cell.qkvo(x).chunk(4, dim=-1)
    i_pre, f_pre = cell.gates(x).chunk(2, dim=-1)
    batch, time, _ = x.shape
    C = torch.zeros(batch, heads, d, d, dtype=x.dtype)  # C = sum of v k^T (d_v x d_k)
    n = torch.zeros(batch, heads, d, dtype=x.dtype)
    outputs = []
    for t in range(time):
        qt, kt, vt = (y[:, t].reshape(batch, heads, d) for y in (q, k, v))
        kt = kt / math.sqrt(d)
        i, f = torch.exp(i_pre[:, t]), torch.sigmoid(f_pre[:, t])  # (B, heads)
        C = f[..., None, None] * C + i[..., None, None] * vt.unsqueeze(-1) * kt.unsqueeze(-2)
        n = f[..., None] * n + i[..., None] * kt
        h = (C @ qt.unsqueeze(-1)).squeeze(-1) / torch.clamp((n * qt).sum(-1).abs(), min=1.0).unsqueeze(-1)
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
        outputs.append(torch.sigmoid(o[:, t]) * (h * cell.head_norm).reshape(batch, -1))
    return torch.stack(outputs, dim=1)


def slstm_equations(cell, x):
    heads, d = cell.heads, cell.head_size
    batch, time, _ = x.shape
    h, c, n = (torch.zeros(batch, heads, d, dtype=x.dtype) for _ in range(3))
    outputs = []
    for t in range(time):
        pre = cell.input_proj(x[:, t]).reshape(batch, heads, 4 * d)
        pre = pre + torch.stack([h[:, j] @ cell.recurrent[j] for j in range(heads)], dim=1)  # each head its own R
        z, i, f, o = pre.chunk(4, dim=-1)
        i, f = torch.exp(i), torch.sigmoid(f)
        c = f * c + i * torch.tanh(z)
        n = f * n + i
        h = torch.sigmoid(o) * c / n
        outputs.append(h.reshape(batch, -1))
    return torch.stack(outputs, dim=1)


def causal_depthwise(x, conv):
    """``y_t = sum_j w_j * x_{t-K+1+j} + b``, inputs before the start taken as 0."""
    width = conv.weight.size(-1)
    padded = F.pad(x, (0, 0, width - 1, 0))
    w = conv.weight[:, 0]  # (C, K)
    return sum(padded[:, j : j + x.size(1)] * w[:, j] for j in range(width)) + conv.bias


def mamba2_equations(mixer, x):
    z, xbc, dt = mixer.in_proj(x).split(mixer.sizes, dim=-1)
    xbc = F.silu(causal_depthwise(xbc, mixer.conv))
    xs, B, C = xbc.split([mixer.sizes[0], mixer.state_size, mixer.state_size], dim=-1)
    batch, time, _ = x.shape
    heads, P = mixer.heads, mixer.head_size
    A = -torch.exp(mixer.log_decay)
    delta = F.softplus(dt + mixer.step_bias)  # (B, T, heads)
    S = torch.zeros(batch, heads, P, mixer.state_size, dtype=x.dtype)
    ys = []
    for t in range(time):
        xt = xs[:, t].reshape(batch, heads, P)
        decay = torch.exp(delta[:, t] * A)  # (B, heads)
        S = decay[..., None, None] * S + (delta[:, t, :, None] * xt).unsqueeze(-1) * B[:, t, None, None, :]
        y = (S @ C[:, t, None, :, None]).squeeze(-1) + mixer.skip[:, None] * xt  # (B, heads, P)
        ys.append(y.reshape(batch, -1))
    y = torch.stack(ys, dim=1) * F.silu(z)
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + mixer.norm.eps) * mixer.norm.weight
    return mixer.out_proj(y)


def rglru_equations(block, x):
    branch = F.gelu(block.gate_proj(x))
    u = causal_depthwise(block.input_proj(x), block.conv)
    r, i = torch.sigmoid(block.gates(u)).chunk(2, dim=-1)
    base = torch.sigmoid(block.log_base)
    h = torch.zeros(x.size(0), u.size(-1), dtype=x.dtype)
    states = []
    for t in range(x.size(1)):
        a = base ** (8 * r[:, t])
        h = a * h + torch.sqrt(1 - a**2) * (i[:, t] * u[:, t])
        states.append(h)
    return block.output_proj(branch * torch.stack(states, dim=1))


EQUATIONS = {"mlstm": mlstm_equations, "slstm": slstm_equations, "mamba2": mamba2_equations, "rglru": rglru_equations}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("grad", [True, False])
def test_each_cell_computes_its_papers_equations(cell, grad):
    torch.manual_seed(0)
    layer = small_chunks(ModernRecurrence(cell, 5, 8, heads=2).double())
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    with torch.set_grad_enabled(grad):  # the parallel form with gradients, the loop without
        out, state = layer(x)
        expected = EQUATIONS[cell](layer.directions[0], x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(state[0, :, :8], expected[:, -1])  # the packed state starts with the last output


@pytest.mark.parametrize("cell", STACKS)
@pytest.mark.parametrize("grad", [True, False])
def test_state_carried_across_a_split_equals_one_pass(cell, grad):
    torch.manual_seed(0)
    stack = small_chunks(RecurrentStack(5, 8, num_layers=2, heads=2, block="residual_mlp", **STACKS[cell]).double())
    x = torch.randn(3, 13, 5, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        whole, whole_state = stack(x)
        first, state = stack(x[:, :5])
        second, final_state = stack(x[:, 5:], state)
    assert whole_state.shape == (2, 3, stack.state_size) == tuple(stack.init_state(3).shape)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(final_state, whole_state)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_stack_on_a_padded_batch_equals_each_sequence_alone(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(4, 8, num_layers=2, cell=cell, heads=2, bidirectional=True, dropout=0.3)
    small_chunks(stack)
    x, lengths = torch.randn(3, 9, 4), torch.tensor([9, 2, 6])
    out, state = stack(x, lengths=lengths)  # training mode: the parallel form, dropout between layers
    grads = torch.autograd.grad(out.sum() + state.sum(), [*stack.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    stack.eval()
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out, state = stack(x, lengths=lengths)
            for b, n in enumerate(lengths.tolist()):
                alone_out, alone_state = stack(x[b : b + 1, :n])
                torch.testing.assert_close(out[b, :n], alone_out[0], atol=1e-5, rtol=1e-5)
                assert out[b, n:].abs().sum() == 0
                torch.testing.assert_close(state[:, b], alone_state[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", PARALLEL)
def test_float32_parallel_form_stays_close_to_the_loop_on_long_sequences(cell):
    """Chunks bound the decays the parallel form exponentiates, so its float32 error does not grow with T."""
    torch.manual_seed(0)
    layer = ModernRecurrence(cell, 8, 16)
    x = torch.randn(2, 1024, 8)
    out, state = layer(x)
    with torch.no_grad():
        expected_out, expected_state = layer(x)
    torch.testing.assert_close(out.detach(), expected_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.detach(), expected_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "mingru", *CELLS])
def test_the_residual_mlp_block_wraps_any_cell(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(6, 8, num_layers=2, cell=cell, heads=2, block="residual_mlp")
    plain = RecurrentStack(6, 8, num_layers=2, cell=cell, heads=2)
    assert sum(p.numel() for p in stack.parameters()) > sum(p.numel() for p in plain.parameters())
    x = torch.randn(2, 7, 6)
    out, _ = stack(x)
    assert out.shape == (2, 7, 8)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(2, 7), rtol=1e-3, atol=1e-3)  # the final RMSNorm
    out.sum().backward()
    assert stack.blocks[0].shortcut.weight.grad is not None  # 6 -> 8: a projection shortcut


def test_initialisation_survives_a_models_uniform_reinitialisation():
    """A language model re-draws every parameter in [-init_range, init_range]; the decay rates, gate
    biases and norm weights that these cells need are set again after it."""
    torch.manual_seed(0)
    network = RNNLanguageModel(30, 8, 8, cell="mamba2", heads=2, block="residual_mlp", init_range=0.1)
    mixer = network.rnn.layers[0].directions[0]
    assert (torch.exp(mixer.log_decay) >= 1).all() and (mixer.skip == 1).all()
    assert (network.rnn.blocks[0].norm.weight == 1).all() and (network.rnn.final_norm.weight == 1).all()
    network = RNNLanguageModel(30, 8, 8, cell="mlstm", heads=2, init_range=0.1)
    assert (network.rnn.layers[0].directions[0].gates.bias[2:] >= 3).all()  # the forget gates start open


def test_a_mixed_xlstm_stack_pads_the_narrower_layers_state():
    stack = RecurrentStack(5, 8, num_layers=3, cell="mlstm", slstm_at=[1], heads=2)
    assert [type(layer.directions[0]) for layer in stack.layers] == [MLSTMCell, SLSTMCell, MLSTMCell]
    mlstm_size, slstm_size = (stack.layers[i].state_size for i in (0, 1))  # 8 + 2*16 + 2*4 + 2, 8 + 4*8
    assert stack.state_size == mlstm_size > slstm_size
    _, state = stack(torch.randn(2, 6, 5))
    assert state.shape == (3, 2, mlstm_size)
    assert (state[1, :, slstm_size:] == 0).all() and (state[1, :, :slstm_size] != 0).any()


def test_bad_options_say_what_to_do():
    with pytest.raises(ValueError, match="needs cell='mlstm'"):
        RecurrentStack(4, 8, num_layers=2, cell="mamba2", slstm_at=[1])
    with pytest.raises(ValueError, match="outside 0..1"):
        RecurrentStack(4, 8, num_layers=2, cell="mlstm", slstm_at=[2])
    with pytest.raises(ValueError, match="heads=3"):
        RecurrentStack(4, 8, cell="mlstm", heads=3)
    with pytest.raises(ValueError, match="drop residual"):
        RecurrentStack(4, 8, num_layers=2, cell="rglru", residual=True, block="residual_mlp")
    with pytest.raises(ValueError, match="unknown block"):
        RecurrentStack(4, 8, block="resnet")
    with pytest.raises(ValueError, match="translator does not take the 'mamba2' cell"):
        Seq2Seq(20, 20, 8, 8, cell="mamba2")


@pytest.mark.parametrize("cell", CELLS)
def test_the_cells_run_in_float32_under_cpu_bf16_autocast(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(5, 8, cell=cell, heads=2)
    x = torch.randn(2, 20, 5)
    expected, _ = stack(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = stack(x.bfloat16())
    assert out.dtype == torch.float32 and torch.isfinite(state).all()
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)  # only the input's rounding differs


def test_tagger_trains_with_a_modern_cell():
    torch.manual_seed(0)
    tagger = SequenceTagger(23, ["O", "B-X", "I-X"], embedding_dim=6, hidden_size=4, cell="mlstm", heads=2)
    tokens, lengths = torch.randint(0, 23, (2, 5)), torch.tensor([5, 3])
    mask = torch.arange(5) < lengths.unsqueeze(1)
    emissions = tagger(tokens, lengths)
    tagger.loss(emissions, torch.randint(0, 3, (2, 5)), mask).backward()
    assert emissions.shape == (2, 5, 3) and tagger.decode(emissions, mask).shape == (2, 5)


@pytest.mark.parametrize("cell", STACKS)
def test_language_model_exports_a_loop_that_matches_torch_and_generates(tmp_path, cell):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8, "num_layers": 2, **STACKS[cell]}
    arguments |= {"heads": 2, "block": "residual_mlp", "tie_weights": True}
    network = RNNLanguageModel(**arguments).eval()
    config = export(pretrained_folder(tmp_path / "lm", network, arguments), tmp_path / "onnx")
    assert recurrent_ops(tmp_path / "onnx" / "model.onnx") == {"Loop"}
    assert config.state.shape == [2, "batch", network.rnn.state_size]

    predictor = deploy.load(tmp_path / "onnx")
    tokens = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(7))
    state = predictor.zero_state(3)
    with torch.no_grad():
        logits, torch_state = network(tokens[:, :9])  # the whole-sequence graph (T > 1) from the zero state
    onnx_logits, state = predictor.step(tokens[:, :9].numpy(), state)
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-4)
    for t in range(9, 12):  # then the step graph (T = 1), carrying the state
        with torch.no_grad():
            logits, torch_state = network(tokens[:, t : t + 1], torch_state)
        onnx_logits, state = predictor.step(tokens[:, t : t + 1].numpy(), state)
        np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(state["h"], torch_state.numpy(), atol=1e-4, rtol=1e-4)
    text = predictor.generate("w1 w2", max_new_tokens=4)
    assert text.startswith("w1 w2") and len(text.split()) >= 2


@pytest.mark.parametrize("cell", ["mlstm", "slstm"])
def test_gates_far_from_zero_export_as_they_run(tmp_path, cell):
    """Gate pre-activations spread over about +-70 to 100, as a trained model's are: a forget gate below -20
    (which onnxruntime's Sigmoid rounds to 0) still counts where the stabiliser is large. Export
    verifies at 1e-4 on every checked shape."""
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8, "num_layers": 1, "cell": cell, "heads": 2}
    network = RNNLanguageModel(**arguments).eval()
    with torch.no_grad():
        for layer in network.modules():
            if isinstance(layer, MLSTMCell):
                layer.gates.weight.mul_(3000.0)  # [input, forget] per head
            elif isinstance(layer, SLSTMCell):
                layer.input_proj.weight.view(2, 4, 4, 8)[:, 1:3].mul_(3000.0)  # per head [z, i, f, o]
    export(pretrained_folder(tmp_path / "lm", network, arguments), tmp_path / "onnx")


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_classifier_exports_and_matches_torch_on_variable_lengths(tmp_path, cell):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 3, "embedding_dim": 8, "hidden_size": 8, "num_layers": 2}
    arguments |= {"cell": cell, "heads": 2, "pooling": "last", "bidirectional": True}
    network = SequenceClassifier(**arguments).eval()
    export(pretrained_folder(tmp_path / "clf", network, arguments, {"labels": ["a", "b", "c"]}), tmp_path / "onnx")
    assert recurrent_ops(tmp_path / "onnx" / "model.onnx") == {"Loop"}
    texts = ["w1 w2 w3 w4 w5 w6 w7", "w3", "w9 w9 w0 nonsense"]
    check_classifier_parity(deploy.load(tmp_path / "onnx", threads=1), network, texts)


@pytest.mark.parametrize("cell", CELLS)
def test_fit_export_and_generate_from_the_command_line(tmp_path, ptb_dir, cell):
    """``rnnzoo fit --model.init_args.cell <cell>`` trains a few steps; its checkpoint exports and generates
    through the torch-free runtime."""
    options = f"--model.init_args.cell {cell} --model.init_args.heads 2 --model.init_args.block residual_mlp"
    rnnzoo(
        tmp_path,
        "fit",
        "--config",
        str(PTB_CONFIG),
        "--data.data_dir",
        str(ptb_dir),
        *QUICK,
        *options.split(),
        "--trainer.max_steps",
        "3",
        "--trainer.limit_val_batches",
        "2",
    )
    checkpoint = tmp_path / "checkpoints" / "ptb_lstm_small" / "last.ckpt"
    rnnzoo(tmp_path, "export", "--ckpt", str(checkpoint), "--out", "onnx")
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import deploy\n"
        "print(deploy.load('onnx').generate('the company said', max_new_tokens=5, seed=0))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.startswith("the company said ") and 3 < len(result.stdout.split()) <= 8  # <eos> may stop it
