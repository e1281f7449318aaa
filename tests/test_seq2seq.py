import pytest
import torch

from zoo.attention import Attention
from zoo.decoding import beam_search, greedy_decode
from zoo.seq2seq import Seq2Seq

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
    assert beam_search(net, source, lengths, BOS, EOS, beam_size=1) == greedy_decode(net, source, lengths, BOS, EOS)


@pytest.mark.parametrize("variant", VARIANTS[2:], ids=lambda v: "-".join(map(str, v.values())))
def test_batched_beam_equals_beam_per_sentence(variant):
    net = model(**variant)
    source, lengths = batch(1)
    together = beam_search(net, source, lengths, BOS, EOS, beam_size=4, max_length=12)
    for b, n in enumerate(lengths.tolist()):
        alone = beam_search(net, source[b : b + 1, :n], lengths[b : b + 1], BOS, EOS, beam_size=4, max_length=12)
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

    greedy = greedy_decode(net, source, lengths, BOS, EOS, max_length=40)
    beam = beam_search(net, source, lengths, BOS, EOS, beam_size=5, max_length=40)
    for b in range(4):
        if len(greedy[b]) < 40:  # finished hypotheses only
            assert log_prob(b, beam[b]) >= log_prob(b, greedy[b]) - 1e-5


def test_greedy_returns_attention_maps():
    net = model(**VARIANTS[2])
    source, lengths = batch()
    hypotheses, maps = greedy_decode(net, source, lengths, BOS, EOS, max_length=9, return_attention=True)
    for hypothesis, weights, n in zip(hypotheses, maps, lengths.tolist(), strict=True):
        assert weights.shape == (min(len(hypothesis) + 1, 9), n)
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model(), *batch(), BOS, EOS, beam_size=0)
    with pytest.raises(ValueError, match="input_feeding"):
        Seq2Seq(VOCAB, VOCAB, attention="bahdanau", input_feeding=True)
    with pytest.raises(ValueError, match="context"):
        Seq2Seq(VOCAB, VOCAB, context="sometimes")


def test_tied_embeddings_share_the_matrix():
    net = Seq2Seq(VOCAB, VOCAB, embedding_dim=8, hidden_size=6, tie_embeddings=True)
    assert net.output.weight is net.target_embedding.weight


def test_scheduled_sampling_feeds_own_predictions():
    net = model(**VARIANTS[0])
    source, lengths = batch()
    target_in = torch.randint(4, VOCAB, (4, 6))
    teacher = net(source, lengths, target_in)
    sampled = net(source, lengths, target_in, teacher_forcing=0.0)
    torch.testing.assert_close(sampled[:, 0], teacher[:, 0])  # the first input is <bos> either way
    assert not torch.allclose(sampled, teacher)
