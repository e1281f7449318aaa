import numpy as np
import pytest
import torch

from zoo import RNNLanguageModel, create_model, generate, list_models
from zoo.common.decoding import sample

V = 50


def test_forward_shapes_and_state_carry():
    torch.manual_seed(0)
    model = RNNLanguageModel(V, embedding_dim=8, hidden_size=16, num_layers=2).eval()
    tokens = torch.randint(0, V, (3, 10))
    logits, state = model(tokens)
    assert logits.shape == (3, 10, V)
    first, carried = model(tokens[:, :4])
    second, _ = model(tokens[:, 4:], carried)
    torch.testing.assert_close(torch.cat([first, second], 1), logits)


def test_tied_weights_share_one_matrix():
    tied = RNNLanguageModel(V, embedding_dim=16, hidden_size=16, tie_weights=True)
    untied = RNNLanguageModel(V, embedding_dim=16, hidden_size=16)
    assert tied.output.weight is tied.embedding.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == V * 16
    tied(torch.randint(0, V, (2, 5)))[0].sum().backward()
    assert tied.embedding.weight.grad is not None


def test_tying_with_different_sizes_adds_a_bottleneck():
    model = RNNLanguageModel(V, embedding_dim=8, hidden_size=16, tie_weights=True)
    assert model.bottleneck is not None and model.output.weight is model.embedding.weight
    assert model(torch.randint(0, V, (2, 5)))[0].shape == (2, 5, V)


def test_init_range_bounds_every_parameter():
    model = RNNLanguageModel(V, embedding_dim=8, hidden_size=8, init_range=0.05)
    assert all(p.abs().max() <= 0.05 for p in model.parameters())


def eos_loving_model(eos_id=3):
    model = RNNLanguageModel(V, embedding_dim=8, hidden_size=8, num_layers=1)
    with torch.no_grad():
        model.output.bias.zero_()
        model.output.bias[eos_id] = 100.0
    return model


def test_embedding_dropout_sets_the_dropout_of_the_word_vectors_alone():
    tokens = torch.randint(0, 50, (4, 6))
    for embedding_dropout, dropped in ((0.0, False), (None, True)):
        model = RNNLanguageModel(50, 16, 16, num_layers=2, dropout=0.9, embedding_dropout=embedding_dropout).train()
        seen = []
        model.rnn.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        model(tokens)
        assert torch.equal(seen[0], model.embed(tokens)) is not dropped
        assert model.dropout.p == 0.9  # between the layers and before the projection either way


def test_generate_stops_at_eos_and_at_max_length():
    assert generate(eos_loving_model(), [1, 2], max_new_tokens=10, temperature=0, eos_id=3) == []
    out = generate(eos_loving_model(), [1, 2], max_new_tokens=6, temperature=0, eos_id=None)
    assert out == [3] * 6


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = RNNLanguageModel(V, embedding_dim=8, hidden_size=8)
    draws = [generate(model, [1], 20, 1.0, None, None, seed=7) for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
    greedy = generate(model, [1], 20, temperature=0)
    assert generate(model, [1], 20, temperature=1.0, top_k=1) == greedy


def test_top_k_only_draws_from_the_k_best():
    logits = np.array([5.0, 4.0, 3.0, -1.0, -2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert {sample(logits, 5.0, top_k=2, rng=rng) for _ in range(200)} == {0, 1}


def test_generation_arguments_are_checked():
    model = RNNLanguageModel(V, embedding_dim=8, hidden_size=8)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [])
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, [1], top_k=0)


def test_registry_builds_the_configured_architecture():
    assert {"ptb-lstm-small", "ptb-lstm-medium", "ptb-lstm-large"} <= set(list_models())
    model = create_model("ptb-lstm-small", vocab_size=100)
    assert model.rnn.cell == "lstm" and model.rnn.num_layers == 2 and model.rnn.hidden_size == 200
    assert create_model("ptb-lstm-small", vocab_size=100, hidden_size=32).rnn.hidden_size == 32
    with pytest.raises(TypeError, match="vocab_size"):
        create_model("ptb-lstm-small")
    with pytest.raises(KeyError, match="ptb-lstm-small"):
        create_model("no-such-model", vocab_size=10)
