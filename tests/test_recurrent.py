import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo import CELLS, GatedCell, JordanCell, LockedDropout, RecurrentStack
from zoo.cells.fused import FusedBidirectional, SingleStep, prepare_for_onnx_export, run_to_lengths
from zoo.cells.loop import reverse_padded

B, T, F, H = 3, 7, 5, 4


def inputs(seed=0):
    return torch.randn(B, T, F, generator=torch.Generator().manual_seed(seed))


def state_tensors(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes(cell, bidirectional):
    stack = RecurrentStack(F, H, num_layers=2, cell=cell, bidirectional=bidirectional)
    out, state = stack(inputs())
    directions = 2 if bidirectional else 1
    assert out.shape == (B, T, directions * H)
    for s in state_tensors(state):
        assert s.shape == (2 * directions, B, stack.state_size)
    assert isinstance(state, tuple) == (cell == "lstm")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_batch_equals_each_sequence_alone(cell, bidirectional):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell=cell, bidirectional=bidirectional).eval()
    x, lengths = inputs(), torch.tensor([7, 3, 5])
    out, state = stack(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_state = stack(x[b : b + 1, :n])
        torch.testing.assert_close(out[b, :n], alone_out[0])
        assert out[b, n:].abs().sum() == 0  # padding positions output zeros
        for batched, single in zip(state_tensors(state), state_tensors(alone_state), strict=True):
            torch.testing.assert_close(batched[:, b], single[:, 0])


@pytest.mark.parametrize("cell", CELLS)
def test_state_carry_equals_one_pass(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell=cell).eval()
    x = inputs()
    whole, whole_state = stack(x)
    first, state = stack(x[:, :3])
    second, final_state = stack(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for a, b in zip(state_tensors(final_state), state_tensors(whole_state), strict=True):
        torch.testing.assert_close(a, b)


def test_gated_cell_matches_hand_loop():
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, cell="gated").eval()
    cell: GatedCell = stack.layers[0].directions[0]
    x = inputs()
    wx, bx, uh = cell.input_proj.weight, cell.input_proj.bias, cell.hidden_proj.weight
    h, outputs = torch.zeros(B, H), []
    for t in range(T):
        pre = x[:, t] @ wx.T + bx + h @ uh.T
        candidate, z = torch.tanh(pre[:, :H]), torch.sigmoid(pre[:, H:])
        h = z * h + (1 - z) * candidate
        outputs.append(h)
    out, state = stack(x)
    torch.testing.assert_close(out, torch.stack(outputs, 1))
    torch.testing.assert_close(state[0], h)


def test_jordan_cell_feeds_back_the_output():
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, cell="jordan").eval()
    cell: JordanCell = stack.layers[0].directions[0]
    x = inputs()
    y, outputs = torch.zeros(B, H), []
    for t in range(T):
        hidden = torch.tanh(
            x[:, t] @ cell.input_proj.weight.T + cell.input_proj.bias + y @ cell.output_to_hidden.weight.T
        )
        y = torch.tanh(hidden @ cell.hidden_to_output.weight.T + cell.hidden_to_output.bias)
        outputs.append(y)
    out, state = stack(x)
    torch.testing.assert_close(out, torch.stack(outputs, 1))
    torch.testing.assert_close(state[0], y)


def test_residual_adds_each_layer_input():
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=3, cell="gru", residual=True).eval()
    x = inputs()
    first, _ = stack.layers[0](x)
    second = stack.layers[1](first)[0] + first
    third = stack.layers[2](second)[0] + second
    torch.testing.assert_close(stack(x)[0], third)


def test_reverse_padded_keeps_padding_in_place():
    x = torch.arange(8.0).view(2, 4, 1)
    reversed_x = reverse_padded(x, torch.tensor([4, 2]))
    assert reversed_x[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


def test_locked_dropout_uses_one_mask_per_sequence():
    torch.manual_seed(0)
    dropout = LockedDropout(0.5).train()
    out = dropout(torch.ones(4, 10, 16))
    assert (out == 0).any() and (out == 2).any()
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same mask at every step
    assert torch.equal(dropout.eval()(torch.ones(4, 10, 16)), torch.ones(4, 10, 16))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown cell"):
        RecurrentStack(F, H, cell="transformer")
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentStack(F, H, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        LockedDropout(1.0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_cells_run_under_cpu_bf16_autocast(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell=cell)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = stack(inputs(), lengths=torch.tensor([7, 2, 4]))
    out.sum().backward()
    torch.testing.assert_close(out.float(), stack(inputs(), lengths=torch.tensor([7, 2, 4]))[0])


@pytest.mark.parametrize("rnn_class", [nn.RNN, nn.LSTM, nn.GRU])
def test_bidirectional_layer_matches_packed_torch_reference(rnn_class):
    """Outputs, final states and gradients equal torch's packed bidirectional module with the same weights."""
    torch.manual_seed(0)
    reference = rnn_class(F, H, batch_first=True, bidirectional=True)
    layer = FusedBidirectional(rnn_class, F, H)
    with torch.no_grad():
        for direction, suffix in zip(layer.directions, ["", "_reverse"], strict=True):
            for name, param in direction.named_parameters():
                param.copy_(getattr(reference, name + suffix))
    x, lengths = inputs(), torch.tensor([4, 7, 4])  # unsorted, with a tie
    state = torch.randn(2, B, H)
    state = (state, torch.randn(2, B, H)) if rnn_class is nn.LSTM else state
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, ref_state = reference(packed, state)
    ref_out, _ = pad_packed_sequence(ref_out, batch_first=True, total_length=T)
    out, got_state = layer(x, state, lengths)
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(state_tensors(got_state), state_tensors(ref_state), strict=True):
        torch.testing.assert_close(a, b)
    (ref_out.square().sum() + sum(s.sum() for s in state_tensors(ref_state))).backward()
    (out.square().sum() + sum(s.sum() for s in state_tensors(got_state))).backward()
    torch.testing.assert_close(layer.directions[1].weight_hh_l0.grad, reference.weight_hh_l0_reverse.grad)
    torch.testing.assert_close(layer.directions[0].weight_ih_l0.grad, reference.weight_ih_l0.grad)


def test_zero_length_is_refused():
    with pytest.raises(ValueError, match="at least one step"):
        run_to_lengths(nn.GRU(F, H, batch_first=True), inputs(), None, torch.tensor([3, 0, 2]))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_export_path_matches_the_training_path(cell, bidirectional, monkeypatch):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell=cell, bidirectional=bidirectional).eval()
    lengths = torch.tensor([T, 2, 5])
    expected_out, expected_state = stack(inputs(), lengths=lengths)
    exported = prepare_for_onnx_export(stack)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # packed, merged-direction path
    out, state = exported(inputs(), lengths=lengths)
    torch.testing.assert_close(out, expected_out)
    for actual, expected in zip(state_tensors(state), state_tensors(expected_state), strict=True):
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize(
    "rnn", [nn.RNN(F, H, batch_first=True), nn.RNN(F, H, nonlinearity="relu", batch_first=True),
            nn.LSTM(F, H, batch_first=True), nn.GRU(F, H, batch_first=True)],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru"],
)  # fmt: skip
def test_single_step_equations_match_the_fused_kernel(rnn):
    step = SingleStep(rnn.eval())
    x = inputs()[:, :1]
    for state in (None, rnn(inputs(1))[1]):
        expected_out, expected_state = rnn(x, state)
        out, new_state = step.equations(x, state)
        torch.testing.assert_close(out, expected_out)
        for actual, expected in zip(state_tensors(new_state), state_tensors(expected_state), strict=True):
            torch.testing.assert_close(actual, expected)
    with pytest.raises(ValueError, match="one-layer, one-direction"):
        SingleStep(nn.GRU(F, H, batch_first=True, bidirectional=True))


def test_every_model_passes_its_stack_options_to_its_stack():
    """The models build their stacks from one ``StackConfig`` picked from their own arguments."""
    from zoo.cells.recurrent import StackConfig
    from zoo.networks.classifier import SequenceClassifier
    from zoo.networks.language_model import RNNLanguageModel
    from zoo.networks.seq2seq import Seq2Seq
    from zoo.networks.tagger import SequenceTagger

    options = {"num_layers": 2, "cell": "gru", "dropout": 0.3, "recurrent_init": "orthogonal"}
    words = {"locked_dropout": True, "residual": True, **options}
    stacks = {
        "classifier": (SequenceClassifier(20, 2, 8, 6, bidirectional=False, **words).rnn, False, words),
        "language model": (RNNLanguageModel(20, 8, 6, **words).rnn, False, words),
        "tagger": (SequenceTagger(20, ["O", "B-X"], 8, 6, **words).rnn, True, words),
        "encoder": (Seq2Seq(20, 20, 8, 6, bidirectional_encoder=True, **options).encoder, True, options),
        "decoder": (Seq2Seq(20, 20, 8, 6, bidirectional_encoder=True, **options).decoder, False, options),
    }
    for where, (stack, bidirectional, given) in stacks.items():
        expected = StackConfig(**given, bidirectional=bidirectional)
        assert (stack.num_layers, stack.cell, stack.num_directions) == (2, "gru", 1 + bidirectional), where
        assert (stack.residual, stack.recurrent_init) == (expected.residual, "orthogonal"), where
        assert type(stack.inter_layer_dropout).__name__ == ("LockedDropout" if expected.locked_dropout else "Dropout")
