"""minGRU and minLSTM (zoo.cells.minimal): the log-space scan against the step-by-step recurrence, the
stack around them, and their ONNX export (an ONNX Loop) against PyTorch."""

import numpy as np
import onnx
import pytest
import torch

import deploy
from deploy.export import export
from tests.conftest import pretrained_folder
from tests.test_deploy import check_classifier_parity
from zoo import RecurrentStack, RNNLanguageModel, SequenceClassifier, SequenceTagger
from zoo.cells.loop import reverse_padded
from zoo.cells.minimal import MINIMAL_CELLS, MinimalRecurrence, g, log_g
from zoo.common.formats import StateSpec

CELLS = list(MINIMAL_CELLS)


def step_by_step(cell, x, h, lengths):
    """The recurrence one ``cell.step`` at a time: padding steps keep the state and output zeros."""
    outputs = []
    for t in range(x.size(1)):
        new_h = cell.step(x[:, t], h)  # (B, H)
        valid = torch.ones_like(h, dtype=torch.bool) if lengths is None else (t < lengths).unsqueeze(1)
        h = torch.where(valid, new_h, h)
        outputs.append(new_h * valid)
    return torch.stack(outputs, dim=1), h


def reference(layer: MinimalRecurrence, x, state, lengths):
    out, h = step_by_step(layer.directions[0], x, state[0], lengths)
    if len(layer.directions) == 1:
        return out, h.unsqueeze(0)
    out_bwd, h_bwd = step_by_step(layer.directions[1], reverse_padded(x, lengths), state[1], lengths)
    return torch.cat([out, reverse_padded(out_bwd, lengths)], dim=-1), torch.stack([h, h_bwd])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_scan_equals_the_step_loop_in_values_and_gradients(cell, with_lengths, bidirectional, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, time, features, hidden = (int(torch.randint(1, n, (), generator=generator)) for n in (5, 14, 6, 6))
    torch.manual_seed(seed)
    layer = MinimalRecurrence(cell, features, hidden, bidirectional).double()
    directions = len(layer.directions)
    x = torch.randn(batch, time, features, dtype=torch.float64, generator=generator, requires_grad=True)
    lengths = torch.randint(1, time + 1, (batch,), generator=generator) if with_lengths else None
    with torch.no_grad():  # a carried state: the (positive) final state of an earlier call
        _, state = layer(torch.randn(batch, 4, features, dtype=torch.float64, generator=generator))
    assert (state > 0).all()
    state.requires_grad_()
    out_weight = torch.randn(batch, time, directions * hidden, dtype=torch.float64, generator=generator)
    state_weight = torch.randn(directions, batch, hidden, dtype=torch.float64, generator=generator)

    def outputs_and_gradients(run):
        out, final = run(layer, x, state, lengths)
        loss = (out * out_weight).sum() + (final * state_weight).sum()
        return out, final, *torch.autograd.grad(loss, [x, state, *layer.parameters()])

    scanned, looped = outputs_and_gradients(MinimalRecurrence.forward), outputs_and_gradients(reference)
    for got, expected in zip(scanned, looped, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_runs_the_exact_recurrence(cell):
    """Without gradients (evaluation, generation) a long float32 sequence gets the step loop's values, not
    the scan's, whose error grows with T: what the exported ONNX Loop computes too."""
    torch.manual_seed(0)
    layer = MinimalRecurrence(cell, 8, 16)
    x, state, lengths = torch.randn(2, 1024, 8), torch.rand(1, 2, 16), torch.tensor([1024, 700])
    with torch.no_grad():
        out, final = layer(x, state, lengths)
        expected_out, expected_final = reference(layer, x, state, lengths)
    torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final, expected_final, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_initial_state_and_padding_give_finite_gradients(cell):
    """log(0) of the default state and log b = -inf past the lengths never reach a gradient as NaN."""
    torch.manual_seed(0)
    layer = MinimalRecurrence(cell, 5, 4, bidirectional=True)
    x, lengths = torch.randn(3, 9, 5, requires_grad=True), torch.tensor([9, 1, 4])
    zeros = torch.zeros(2, 3, 4, requires_grad=True)
    for state, inputs in ((None, [x]), (zeros, [x, zeros])):
        out, final = layer(x, state, lengths)
        assert torch.isfinite(out).all() and torch.isfinite(final).all()
        assert out[1, 1:].abs().sum() == 0  # padding outputs zeros
        grads = torch.autograd.grad(out.sum() + final.sum(), [*inputs, *layer.parameters()])
        assert all(torch.isfinite(grad).all() for grad in grads)


def test_positive_activation_and_its_log():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64, requires_grad=True)
    assert (g(x) > 0).all()
    torch.testing.assert_close(log_g(x), g(x).log())
    (gradient,) = torch.autograd.grad(log_g(x).sum(), x)
    assert torch.isfinite(gradient).all()


@pytest.mark.parametrize("cell", CELLS)
def test_stack_state_carry_equals_one_pass(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(5, 4, num_layers=2, cell=cell, residual=True).eval()
    x = torch.randn(3, 11, 5)
    whole, whole_state = stack(x)
    first, state = stack(x[:, :4])
    second, final_state = stack(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(final_state, whole_state)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_residual_stack_on_a_padded_batch_equals_each_sequence_alone(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(4, 4, num_layers=2, cell=cell, bidirectional=True, residual=True, dropout=0.3)
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 3, 5])
    out, state = stack(x, lengths=lengths)  # training mode: dropout between the layers
    (out.sum() + state.sum()).backward()
    assert out.shape == (3, 7, 8) and state.shape == (4, 3, 4)
    stack.eval()
    out, state = stack(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_state = stack(x[b : b + 1, :n])
        torch.testing.assert_close(out[b, :n], alone_out[0])
        assert out[b, n:].abs().sum() == 0
        torch.testing.assert_close(state[:, b], alone_state[:, 0])


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_export_path_matches_the_scan(cell, monkeypatch):
    torch.manual_seed(0)
    stack = RecurrentStack(5, 4, num_layers=2, cell=cell, bidirectional=True).eval()
    x, lengths, state = torch.randn(3, 8, 5), torch.tensor([8, 2, 5]), torch.randn(4, 3, 4)  # any sign
    expected_out, expected_state = stack(x, state, lengths)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # the loop the exporter records
    out, final = stack(x, state, lengths)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(final, expected_state)


def test_tagger_trains_with_a_minimal_cell():
    torch.manual_seed(0)
    tagger = SequenceTagger(23, ["O", "B-X", "I-X"], embedding_dim=6, hidden_size=4, cell="minlstm")
    tokens, lengths = torch.randint(0, 23, (2, 5)), torch.tensor([5, 3])
    mask = torch.arange(5) < lengths.unsqueeze(1)
    emissions = tagger(tokens, lengths)
    tagger.loss(emissions, torch.randint(0, 3, (2, 5)), mask).backward()
    assert emissions.shape == (2, 5, 3) and tagger.decode(emissions, mask).shape == (2, 5)


def recurrent_ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node} & {"Loop", "RNN", "GRU", "LSTM"}


@pytest.mark.parametrize("cell", CELLS)
def test_language_model_exports_a_loop_that_matches_torch_on_sequences_and_steps(tmp_path, cell):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8, "num_layers": 2, "cell": cell}
    network = RNNLanguageModel(**arguments).eval()
    config = export(pretrained_folder(tmp_path / "lm", network, arguments), tmp_path / "onnx")
    assert recurrent_ops(tmp_path / "onnx" / "model.onnx") == {"Loop"}
    assert config.state == StateSpec(inputs=["h"], outputs=["h_out"], shape=[2, "batch", 8])

    predictor = deploy.load(tmp_path / "onnx")
    tokens = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(7))
    state = predictor.zero_state(3)
    with torch.no_grad():
        logits, torch_state = network(tokens[:, :9])  # the whole-sequence graph (T > 1) from the zero state
    onnx_logits, state = predictor.step(tokens[:, :9].numpy(), state)
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(state["h"], torch_state.numpy(), atol=1e-5)
    for t in range(9, 12):  # then the step graph (T = 1), carrying the state
        with torch.no_grad():
            logits, torch_state = network(tokens[:, t : t + 1], torch_state)
        onnx_logits, state = predictor.step(tokens[:, t : t + 1].numpy(), state)
        np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-5)
        np.testing.assert_allclose(state["h"], torch_state.numpy(), atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_classifier_exports_and_matches_torch_on_variable_lengths(tmp_path, cell):
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 3, "embedding_dim": 8, "hidden_size": 6, "num_layers": 2}
    arguments |= {"cell": cell, "pooling": "last", "bidirectional": True, "residual": True}
    network = SequenceClassifier(**arguments).eval()
    export(pretrained_folder(tmp_path / "clf", network, arguments, {"labels": ["a", "b", "c"]}), tmp_path / "onnx")
    assert recurrent_ops(tmp_path / "onnx" / "model.onnx") == {"Loop"}

    texts = ["w1 w2 w3 w4 w5 w6 w7", "w3", "w9 w9 w0 nonsense"]
    check_classifier_parity(deploy.load(tmp_path / "onnx", threads=1), network, texts)


@pytest.mark.parametrize("cell", CELLS)
def test_the_scan_runs_in_float32_under_cpu_bf16_autocast(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(5, 4, num_layers=2, cell=cell)
    x, lengths = torch.randn(3, 40, 5), torch.tensor([40, 2, 17])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = stack(x, lengths=lengths)
    (out.float().sum() + state.float().sum()).backward()
    assert out.dtype == torch.float32  # only the projections ran in bfloat16
    torch.testing.assert_close(out, stack(x, lengths=lengths)[0], atol=0.05, rtol=0.05)
