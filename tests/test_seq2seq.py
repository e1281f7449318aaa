import numpy as np
import pytest
import torch

from zoo.common import decoding
from zoo.networks.attention import Attention
from zoo.networks.seq2seq import Seq2Seq, translate_ids

BOS, EOS = 2, 3
VOCAB = 11
VARIANTS = [
    {"context": "initial"},
    {"context": "every_step", "cell": "lstm"},
    {"context": "attention", "attention": "bahdanau"},
    {"context": "attention", "attention": "general", "cell": "lstm"},
    {"context": "attention", "attention": "dot", "input_feeding": True},
]


def model(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"embedding_dim": 8, "hidden_size": 6, "num_layers": 2, "dropout": 0.0} | kwargs
    return Seq2Seq(VOCAB, VOCAB + 2, **kwargs).eval()


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 7, 3])
    source = torch.randint(4, VOCAB, (4, 7), generator=generator)
    source[torch.arange(7) >= lengths.unsqueeze(1)] = 0
    return source, lengths


@pytest.mark.parametrize("kind", ["bahdanau", "dot", "general"])
def test_attention_weights_sum_to_one_over_valid_positions(kind):
    torch.manual_seed(0)
    attention = Attention(kind, 6, 6)
    memory = torch.randn(3, 5, 6)
    mask = torch.arange(5) < torch.tensor([5, 2, 4]).unsqueeze(1)
    context, weights = attention(torch.randn(3, 4, 6), attention.keys(memory), memory, mask)
    assert context.shape == (3, 4, 6) and weights.shape == (3, 4, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert (weights.masked_select(~mask.unsqueeze(1).expand_as(weights)) == 0).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_teacher_forced_logits_match_step_by_step_and_ignore_padding(variant):
    net = model(**variant)
    source, lengths = batch()
    target_in = torch.randint(4, VOCAB, (4, 6))
    logits = net(source, lengths, target_in)
    assert logits.shape == (4, 6, VOCAB + 2)
    memory, state = net.encode(source, lengths)
    for t in range(6):
        step_logits, state, _ = net.decode_step(target_in[:, t], state, memory)
        torch.testing.assert_close(step_logits, logits[:, t])
    for b, n in enumerate(lengths.tolist()):  # a sentence alone, without padding, gives the same logits
        alone = net(source[b : b + 1, :n], lengths[b : b + 1], target_in[b : b + 1])
        torch.testing.assert_close(alone[0], logits[b])


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_beam_of_one_is_greedy(variant):
    net = model(**variant)
    source, lengths = batch()
    greedy = translate_ids(net, source, lengths, BOS, EOS, beam_size=1)
    memory, state = net.encode(source, lengths)

    def step(tokens, state):
        logits, state, _ = net.decode_step(torch.from_numpy(tokens), state, memory)
        return logits.numpy(), state

    def select(state, rows):
        return net.select(state, torch.from_numpy(rows))

    with torch.no_grad():
        beam = decoding.beam_search(step, select, state, len(source), 1, BOS, EOS, 2 * int(lengths.max()) + 10)
    assert beam == greedy


@pytest.mark.parametrize("variant", VARIANTS[2:], ids=lambda v: "-".join(map(str, v.values())))
def test_batched_beam_equals_beam_per_sentence(variant):
    net = model(**variant)
    source, lengths = batch(1)
    together = translate_ids(net, source, lengths, BOS, EOS, beam_size=4, max_new_tokens=12)
    for b, n in enumerate(lengths.tolist()):
        alone = translate_ids(net, source[b : b + 1, :n], lengths[b : b + 1], BOS, EOS, beam_size=4, max_new_tokens=12)
        assert alone[0] == together[b]


def test_beam_scores_at_least_greedy():
    """A wider beam never returns a hypothesis the model scores lower than greedy's (same length penalty)."""
    net = model(**VARIANTS[2])
    source, lengths = batch(2)

    @torch.no_grad()
    def log_prob(b, hypothesis):
        target = torch.tensor([[BOS] + hypothesis])
        logits = net(source[b : b + 1], lengths[b : b + 1], target).log_softmax(-1)[0]
        ids = hypothesis + [EOS]
        return float(logits[torch.arange(len(ids)), torch.tensor(ids)].sum()) / len(ids)

    greedy = translate_ids(net, source, lengths, BOS, EOS, beam_size=1, max_new_tokens=40)
    beam = translate_ids(net, source, lengths, BOS, EOS, beam_size=5, max_new_tokens=40)
    for b in range(4):
        if len(greedy[b]) < 40:  # finished hypotheses only
            assert log_prob(b, beam[b]) >= log_prob(b, greedy[b]) - 1e-5


def test_greedy_returns_attention_maps():
    net = model(**VARIANTS[2])
    source, lengths = batch()
    steps = []
    hypotheses = translate_ids(net, source, lengths, BOS, EOS, beam_size=1, max_new_tokens=9, attention=steps)
    maps = torch.from_numpy(np.stack(steps, 1))  # (B, steps, S)
    assert maps.shape[:2] == (len(hypotheses), max(min(len(h) + 1, 9) for h in hypotheses))
    for hypothesis, weights, n in zip(hypotheses, maps, lengths.tolist(), strict=True):
        valid = weights[: min(len(hypothesis) + 1, 9)]
        torch.testing.assert_close(valid.sum(-1), torch.ones(len(valid)))
        assert not valid[:, n:].any()  # no weight on padding


def test_bad_arguments():
    with pytest.raises(ValueError, match="beam_size"):
        translate_ids(model(), *batch(), BOS, EOS, beam_size=0)
    with pytest.raises(ValueError, match="input_feeding"):
        Seq2Seq(VOCAB, VOCAB, attention="bahdanau", input_feeding=True)
    with pytest.raises(ValueError, match="context"):
        Seq2Seq(VOCAB, VOCAB, context="sometimes")


def test_tied_weights_share_the_matrix_and_the_old_name_still_works():
    net = Seq2Seq(VOCAB, VOCAB, embedding_dim=8, hidden_size=6, tie_weights=True)
    assert net.output.weight is net.target_embedding.weight
    with pytest.warns(DeprecationWarning, match="use tie_weights"):
        old = Seq2Seq(VOCAB, VOCAB, embedding_dim=8, hidden_size=6, tie_embeddings=True)
    assert old.output.weight is old.target_embedding.weight


def test_scheduled_sampling_feeds_own_predictions():
    net = model(**VARIANTS[0])
    source, lengths = batch()
    target_in = torch.randint(4, VOCAB, (4, 6))
    teacher = net(source, lengths, target_in)
    sampled = net(source, lengths, target_in, teacher_forcing=0.0)
    torch.testing.assert_close(sampled[:, 0], teacher[:, 0])  # the first input is <bos> either way
    assert not torch.allclose(sampled, teacher)
