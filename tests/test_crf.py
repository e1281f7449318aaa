import itertools

import pytest
import torch

from zoo.networks.crf import CRF, bio_constraints

NUM_TAGS = 3
LENGTHS = [4, 2, 3]
BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
OUT, B_PER, I_PER, B_LOC, I_LOC = range(len(BIO))


def make_crf(num_tags=NUM_TAGS, seed=0, constraints=None) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(num_tags, *(constraints or ()))
    with torch.no_grad():  # larger than the default init so that transitions matter
        for p in crf.parameters():
            p.normal_()
    return crf


def batch(lengths=LENGTHS, num_tags=NUM_TAGS, seed=0):
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(len(lengths), max(lengths), num_tags, generator=g)
    tags = torch.randint(num_tags, (len(lengths), max(lengths)), generator=g)
    mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    return emissions, tags, mask


def path_score(crf, emissions, path, use_penalties=True):
    """Score of one tag path of a single sequence ``emissions`` (n, num_tags), written out step by step."""
    transitions, start, end = (
        crf.scores() if use_penalties else (crf.transitions, crf.start_transitions, crf.end_transitions)
    )
    score = start[path[0]] + emissions[0, path[0]]
    for t in range(1, len(path)):
        score = score + transitions[path[t - 1], path[t]] + emissions[t, path[t]]
    return score + end[path[-1]]


def brute_force(crf, emissions, valid=None):
    """(log partition, best path) of one sequence by enumerating every tag path (only ``valid`` ones if given)."""
    paths = [p for p in itertools.product(range(crf.num_tags), repeat=len(emissions)) if valid is None or valid(p)]
    scores = torch.stack([path_score(crf, emissions, p, use_penalties=valid is None) for p in paths])
    return scores.logsumexp(0), list(paths[scores.argmax()])


def is_valid_bio(path):
    labels = [BIO[i] for i in path]
    for previous, label in zip(["O"] + labels[:-1], labels, strict=True):
        if label.startswith("I-") and previous not in ("B-" + label[2:], label):
            return False
    return True


def test_nll_matches_brute_force():
    crf = make_crf()
    emissions, tags, mask = batch()
    with torch.no_grad():
        log_likelihood = crf.log_likelihood(emissions, tags, mask)
        expected = []
        for b, n in enumerate(LENGTHS):
            log_z, _ = brute_force(crf, emissions[b, :n])
            expected.append(path_score(crf, emissions[b, :n], tags[b, :n].tolist()) - log_z)
        expected = torch.stack(expected)
        torch.testing.assert_close(log_likelihood, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(crf(emissions, tags, mask), -expected.mean(), atol=1e-5, rtol=0)
    assert (log_likelihood < 0).all()


def test_decode_matches_brute_force():
    crf = make_crf(seed=1)
    emissions, _, mask = batch(seed=1)
    with torch.no_grad():
        decoded = crf.decode(emissions, mask)
        assert decoded.shape == mask.shape and decoded.dtype == torch.long
        for b, n in enumerate(LENGTHS):
            assert decoded[b, :n].tolist() == brute_force(crf, emissions[b, :n])[1]
            assert (decoded[b, n:] == 0).all()


def test_padding_changes_nothing():
    crf = make_crf(seed=2)
    emissions, tags, mask = batch(seed=2)
    tags = tags.masked_fill(~mask, -100)  # the usual ignore index must be accepted at padding
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 1e3)  # loud padding: would show up if it leaked in
    with torch.no_grad():
        batched_ll = crf.log_likelihood(emissions, tags, mask)
        batched_path = crf.decode(emissions, mask)
        for b, n in enumerate(LENGTHS):
            alone = emissions[b : b + 1, :n]
            torch.testing.assert_close(batched_ll[b : b + 1], crf.log_likelihood(alone, tags[b : b + 1, :n]))
            assert batched_path[b, :n].tolist() == crf.decode(alone)[0].tolist()


def test_bio_constraints_matrix():
    allowed, allowed_start, allowed_end = bio_constraints(BIO)
    assert allowed_start.tolist() == [True, True, False, True, False]
    assert allowed_end.all()
    assert allowed[B_PER, I_PER] and allowed[I_PER, I_PER]
    assert not allowed[OUT, I_PER] and not allowed[B_LOC, I_PER] and not allowed[I_LOC, I_PER]
    assert allowed[I_LOC, B_PER] and allowed[B_PER, OUT] and allowed[OUT, B_LOC]
    assert allowed.sum() == 25 - 2 * 3


def test_bio_constraints_leave_pos_tags_free():
    for matrix in bio_constraints(["NN", "VB", "IN", "DT", "JJ", "O"]):
        assert matrix.all()


def test_constrained_decode_never_breaks_bio():
    crf = make_crf(num_tags=len(BIO), seed=3, constraints=bio_constraints(BIO))
    # Each row strongly prefers an invalid sequence: start with I-PER, O -> I-PER, B-LOC -> I-PER.
    favoured = [[I_PER, OUT, I_LOC], [OUT, I_PER, I_PER], [B_LOC, I_PER, OUT]]
    emissions = torch.zeros(3, 3, len(BIO))
    for b, path in enumerate(favoured):
        for t, tag in enumerate(path):
            emissions[b, t, tag] = 50.0
    mask = torch.ones(3, 3, dtype=torch.bool)
    with torch.no_grad():
        decoded = crf.decode(emissions, mask)
        for b in range(3):
            assert not is_valid_bio(favoured[b])
            assert is_valid_bio(decoded[b].tolist())
            assert decoded[b].tolist() == brute_force(crf, emissions[b], valid=is_valid_bio)[1]


@pytest.mark.parametrize("seed", [4, 5])
def test_constrained_decode_matches_valid_brute_force(seed):
    crf = make_crf(num_tags=len(BIO), seed=seed, constraints=bio_constraints(BIO))
    lengths = [3, 1, 2]
    emissions, _, mask = batch(lengths, num_tags=len(BIO), seed=seed)
    emissions = emissions * 5
    with torch.no_grad():
        decoded = crf.decode(emissions, mask)
        for b, n in enumerate(lengths):
            assert decoded[b, :n].tolist() == brute_force(crf, emissions[b, :n], valid=is_valid_bio)[1]


def test_gradients_flow():
    crf = make_crf(seed=6)
    emissions, tags, mask = batch(seed=6)
    emissions.requires_grad_(True)
    loss = crf(emissions, tags, mask)
    loss.backward()
    for grad in (emissions.grad, crf.transitions.grad, crf.start_transitions.grad, crf.end_transitions.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (emissions.grad[~mask] == 0).all()
    assert crf.transition_penalty.grad is None and not crf.transition_penalty.requires_grad


def test_constraints_are_buffers_not_parameters():
    crf = CRF(len(BIO), *bio_constraints(BIO))
    assert {name for name, _ in crf.named_parameters()} == {"transitions", "start_transitions", "end_transitions"}
    assert crf.transition_penalty[0, 2] == -10000.0 and crf.start_penalty[2] == -10000.0
    assert "transition_penalty" in crf.state_dict()


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        CRF(3, allowed=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        CRF(3).decode(torch.zeros(1, 2, 4))
