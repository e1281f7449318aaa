import pytest
import torch
from torch import nn

from zoo import CELLS, RecurrentStack
from zoo.cells.fused import prepare_for_onnx_export
from zoo.cells.recurrent import recurrences
from zoo.networks.classifier import SequenceClassifier
from zoo.networks.language_model import RNNLanguageModel
from zoo.networks.seq2seq import Seq2Seq
from zoo.networks.tagger import SequenceTagger

F, H = 5, 6


def blocks(module: nn.Module):
    """Every (H, H) gate block of every recurrent matrix in ``module``."""
    return [block for weight, _ in recurrences(module) for block in weight.detach().split(H)]


def is_orthogonal(block: torch.Tensor) -> bool:
    return torch.allclose(torch.linalg.svdvals(block), torch.ones(H), atol=1e-5)


# Cells whose gates read only the input (minGRU-like) have no recurrent matrix to initialise, nor has the
# sLSTM a matrix of (H, H) gate blocks (its recurrence is block-diagonal, per head).
RECURRENT = [cell for cell in CELLS if recurrences(RecurrentStack(F, H, cell=cell, heads=2))]
INPUT_GATED = [cell for cell in CELLS if cell not in RECURRENT]


@pytest.mark.parametrize("cell", RECURRENT)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_orthogonal_makes_every_gate_block_orthogonal(cell, bidirectional):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell=cell, bidirectional=bidirectional, recurrent_init="orthogonal")
    directions = 2 if bidirectional else 1
    gates = {"lstm": 4, "gru": 3, "gated": 2}.get(cell, 1)
    assert len(recurrences(stack)) == 2 * directions
    assert len(blocks(stack)) == 2 * directions * gates
    assert all(is_orthogonal(block) for block in blocks(stack))
    torch.manual_seed(0)
    default = RecurrentStack(F, H, num_layers=2, cell=cell, bidirectional=bidirectional)
    assert not any(is_orthogonal(block) for block in blocks(default))


@pytest.mark.parametrize("cell", RECURRENT)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_identity_makes_every_gate_block_the_identity_without_bias(cell, bidirectional):
    stack = RecurrentStack(F, H, num_layers=2, cell=cell, bidirectional=bidirectional, recurrent_init="identity")
    assert all(torch.equal(block, torch.eye(H)) for block in blocks(stack))
    assert all(not bias.any() for _, biases in recurrences(stack) for bias in biases)


@pytest.mark.parametrize("cell, rnn_class", [("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_default_is_torchs_own_initialisation(cell, rnn_class):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell=cell)
    torch.manual_seed(0)
    reference = nn.ModuleList([rnn_class(F, H, batch_first=True), rnn_class(H, H, batch_first=True)])
    for got, expected in zip(stack.layers.parameters(), reference.parameters(), strict=True):
        assert torch.equal(got, expected)


def test_irnn_is_an_identity_relu_rnn():
    stack = RecurrentStack(F, H, cell="rnn", bidirectional=True, recurrent_init="identity", nonlinearity="relu")
    assert all(direction.nonlinearity == "relu" for direction in stack.layers[0].directions)
    with torch.no_grad():  # a zero input keeps a non-negative state as it is
        stack.layers[0].directions[0].weight_ih_l0.zero_()
        h0 = torch.rand(1, 2, H)
        _, h = stack.layers[0].directions[0](torch.zeros(2, 9, F), h0)
    torch.testing.assert_close(h, h0)


def test_relu_rnn_keeps_its_nonlinearity_in_the_export_form(monkeypatch):
    torch.manual_seed(0)
    stack = RecurrentStack(F, H, num_layers=2, cell="rnn", bidirectional=True, nonlinearity="relu").eval()
    x, lengths = torch.randn(3, 7, F), torch.tensor([7, 2, 5])
    expected, _ = stack(x, lengths=lengths)
    exported = prepare_for_onnx_export(stack)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # packed, merged-direction path
    torch.testing.assert_close(exported(x, lengths=lengths)[0], expected)


@pytest.mark.parametrize("cell", INPUT_GATED)
def test_cells_without_a_recurrent_matrix_refuse_it(cell):
    with pytest.raises(ValueError, match="no recurrent matrix"):
        RecurrentStack(F, H, cell=cell, heads=2, recurrent_init="orthogonal")


def test_bad_values_are_refused():
    with pytest.raises(
        ValueError, match="unknown recurrent_init 'xavier'; choose one of default, orthogonal, identity"
    ):
        RecurrentStack(F, H, recurrent_init="xavier")
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        RecurrentStack(F, H, cell="rnn", nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="'rnn' cell only"):
        RecurrentStack(F, H, cell="lstm", nonlinearity="relu")
    with pytest.raises(ValueError, match="unknown recurrent_init"):
        RNNLanguageModel(10, recurrent_init="eye")


def test_language_model_sets_the_recurrent_matrices_after_init_range():
    model = RNNLanguageModel(10, 8, H, num_layers=2, init_range=0.1, recurrent_init="orthogonal")
    assert all(is_orthogonal(block) for block in blocks(model))
    assert model.embedding.weight.abs().max() <= 0.1


def test_every_model_passes_the_options_to_its_stacks():
    models = [
        RNNLanguageModel(10, 8, H, cell="rnn", recurrent_init="identity", nonlinearity="relu"),
        SequenceClassifier(10, 2, 8, H, cell="rnn", recurrent_init="identity", nonlinearity="relu"),
        SequenceTagger(10, ["O", "B-X"], 8, H, cell="rnn", recurrent_init="identity", nonlinearity="relu"),
        Seq2Seq(10, 10, 8, H // 2, cell="rnn", recurrent_init="identity", nonlinearity="relu"),
    ]
    for model in models:
        stacks = [m for m in model.modules() if isinstance(m, RecurrentStack)]
        assert stacks and all(s.recurrent_init == "identity" and s.nonlinearity == "relu" for s in stacks)
        for weight, _ in recurrences(model):
            assert torch.equal(weight, torch.eye(weight.size(1)))
