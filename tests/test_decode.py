"""Trie-constrained beam search: validity, exactness against exhaustive scoring, cache correctness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.errors import FreshsidError
from freshsid.retriever.decode import beam_search, score_items
from freshsid.retriever.model import Retriever, RetrieverConfig
from freshsid.sid.trie import SidTrie
from reference_decode import reference_beam_search, same_ranking


def make_model(sizes, seed=0, max_history=4) -> Retriever:
    torch.manual_seed(seed)
    cfg = RetrieverConfig(
        codebook_sizes=tuple(sizes), width=16, n_layers=2, n_heads=2, ffn=32, user_buckets=5,
        max_history=max_history, dropout=0.0,
    )
    model = Retriever(cfg).eval()
    with torch.no_grad():  # spread the scores so rankings are not near-ties
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return model


@st.composite
def cases(draw):
    sizes = tuple(draw(st.lists(st.integers(1, 5), min_size=2, max_size=3)))
    space = list(itertools.product(*(range(k) for k in sizes)))
    chosen = draw(st.lists(st.sampled_from(space), unique=True, min_size=1, max_size=min(len(space), 20)))
    codes = np.array(chosen, dtype=np.int64)
    allowed = draw(st.lists(st.integers(0, len(codes) - 1), unique=True))
    n_users = draw(st.integers(1, 3))
    hist = draw(
        st.lists(st.lists(st.integers(-1, len(codes) - 1), min_size=4, max_size=4), min_size=n_users, max_size=n_users)
    )
    return sizes, codes, np.array(allowed, dtype=np.int64), np.array(hist, dtype=np.int64), draw(st.integers(0, 99))


@settings(max_examples=40, deadline=None)
@given(cases(), st.integers(1, 6), st.integers(1, 8))
def test_decoded_items_are_valid_distinct_and_scored_exactly(case, beam, top_k):
    sizes, codes, allowed, hist, seed = case
    model = make_model(sizes, seed)
    trie = SidTrie.from_codes(codes, sizes, items=allowed)
    users = np.arange(len(hist)) % 5
    items, scores = beam_search(model, hist, users, codes, trie, beam=beam, top_k=top_k)
    assert items.shape == scores.shape == (len(hist), top_k)
    for row, row_scores in zip(items.tolist(), scores, strict=True):
        real = [i for i in row if i >= 0]
        assert row[: len(real)] == real  # -1 padding only at the tail
        assert set(real) <= set(allowed.tolist()) and len(set(real)) == len(real)
        assert torch.isfinite(row_scores[: len(real)]).all() and torch.isinf(row_scores[len(real) :]).all()
        assert (row_scores[: len(real)].diff() <= 1e-6).all()
    assert trie.is_valid(codes[items[items >= 0].numpy()]).all()
    # KV-cached beam scores equal a full no-cache forward of the same items.
    exact = score_items(model, hist, users, codes, trie, items=items)
    found = items >= 0
    assert torch.allclose(scores[found], exact[found], atol=1e-4)
    assert torch.isinf(exact[~found]).all()


@settings(max_examples=25, deadline=None)
@given(cases())
def test_wide_beam_equals_exhaustive_ranking(case):
    sizes, codes, allowed, hist, seed = case
    model = make_model(sizes, seed)
    trie = SidTrie.from_codes(codes, sizes, items=allowed)
    users = np.arange(len(hist)) % 5
    n = len(allowed)
    items, scores = beam_search(model, hist, users, codes, trie, beam=max(n, 1), top_k=n + 2)
    if n == 0:
        assert (items == -1).all()
        return
    everything = torch.as_tensor(allowed).expand(len(hist), n)
    exact = score_items(model, hist, users, codes, trie, items=everything)
    ref_scores, order = exact.sort(dim=1, descending=True)
    assert torch.allclose(scores[:, :n], ref_scores, atol=1e-4)
    assert (items[:, n:] == -1).all()
    for u in range(len(hist)):
        assert sorted(items[u, :n].tolist()) == sorted(allowed.tolist())
        # Same ranking wherever the reference scores are not (near-)tied.
        gaps = ref_scores[u].diff().abs() > 1e-3
        clear = torch.cat([gaps[:1], gaps[1:] & gaps[:-1]]) if n > 1 else torch.tensor([True])
        ref_items = everything[u][order[u]]
        assert torch.equal(items[u, :n][: len(clear)][clear], ref_items[: len(clear)][clear])


def test_beam_500_on_a_larger_trie_matches_scoring_and_padding_sides():
    rng = np.random.default_rng(0)
    sizes = (16, 16, 4)
    space = np.array(list(itertools.product(*(range(k) for k in sizes))))
    codes = space[rng.choice(len(space), 700, replace=False)]
    model = make_model(sizes, seed=3, max_history=6)
    trie = SidTrie.from_codes(codes, sizes)
    right = np.array([[5, 9, 100, -1, -1, -1], [1, 2, 3, 4, 5, 6], [-1] * 6])
    left = np.array([[-1, -1, -1, 5, 9, 100], [1, 2, 3, 4, 5, 6], [-1] * 6])
    users = np.array([0, 1, 2])
    items, scores = beam_search(model, right, users, codes, trie, beam=500, top_k=600)
    items_l, scores_l = beam_search(model, left, users, codes, trie, beam=500, top_k=600, batch_size=2)
    assert torch.equal(items, items_l) and torch.allclose(scores, scores_l, atol=1e-5)
    assert ((items >= 0).sum(1) == 600).all()
    exact = score_items(model, right, users, codes, trie, items=items[:, :50])
    assert torch.allclose(scores[:, :50], exact, atol=1e-4)


def test_errors_and_mode_restored():
    sizes = (3, 2)
    codes = np.array([[0, 0], [1, 1], [2, 0]])
    model = make_model(sizes).train()
    trie = SidTrie.from_codes(codes, sizes)
    items, _ = beam_search(model, np.array([[0, 1]]), np.array([0]), codes, trie, beam=2, top_k=2)
    assert model.training and items.shape == (1, 2)
    with pytest.raises(FreshsidError, match="SID shape"):
        beam_search(model, np.array([[0]]), np.array([0]), codes, SidTrie(codes, (3, 3)), beam=2, top_k=2)
    with pytest.raises(FreshsidError):
        beam_search(model, np.zeros((1, 5), dtype=np.int64), np.array([0]), codes, trie, beam=2, top_k=2)
    with pytest.raises(FreshsidError):
        beam_search(model, np.array([[7]]), np.array([0]), codes, trie, beam=2, top_k=2)
    with pytest.raises(FreshsidError):
        beam_search(model, np.array([[0]]), np.array([0]), codes, trie, beam=0, top_k=2)


# ---------------------------------------------------------------- equal to today's decode

def assert_same_as_reference(model, hist, users, codes, trie, *, beam, top_k, batch_size=64):
    """The decode returns the reference's items, in its order but among ties, and its scores to 1e-5."""
    items, scores = beam_search(model, hist, users, codes, trie, beam=beam, top_k=top_k, batch_size=batch_size)
    ref_items, ref_scores = reference_beam_search(model, hist, users, codes, trie, beam=beam, top_k=top_k)
    assert same_ranking(items, scores, ref_items, ref_scores)
    return items


def with_collisions(rng, sizes, n_prefixes, max_group):
    """SIDs whose last level is a collision suffix: groups of 1..max_group items per prefix."""
    space = np.array(list(itertools.product(*(range(k) for k in sizes[:-1]))))
    prefixes = space[rng.choice(len(space), n_prefixes, replace=False)]
    rows = [(*p, s) for p in prefixes for s in range(int(rng.integers(1, max_group + 1)))]
    return np.array(rows, dtype=np.int64)[rng.permutation(len(rows))]


@settings(max_examples=30, deadline=None)
@given(cases(), st.integers(1, 8), st.integers(1, 10), st.integers(1, 3))
def test_decode_equals_the_reference_on_any_trie(case, beam, top_k, batch_size):
    sizes, codes, allowed, hist, seed = case  # allowed may be empty: every row masked from the root
    trie = SidTrie.from_codes(codes, sizes, items=allowed)
    assert_same_as_reference(make_model(sizes, seed), hist, np.arange(len(hist)) % 5, codes, trie, beam=beam,
                             top_k=top_k, batch_size=batch_size)


@pytest.mark.parametrize("max_group", [1, 3, 9])  # 1: no collisions; 9: most prefixes shared
@pytest.mark.parametrize("beam,top_k", [(4, 3), (30, 50), (500, 600)])
def test_decode_equals_the_reference_with_and_without_collisions(max_group, beam, top_k):
    rng = np.random.default_rng(max_group)
    sizes = (6, 6, 6, 10)
    codes = with_collisions(rng, sizes, 60, max_group)
    trie = SidTrie.from_codes(codes, sizes)
    hist = rng.integers(-1, len(codes), (5, 6))
    hist[0] = -1  # a user with no history
    items = assert_same_as_reference(make_model(sizes, seed=max_group, max_history=6), hist, np.arange(5), codes,
                                     trie, beam=beam, top_k=top_k)
    if beam >= len(codes):  # a beam wider than the catalog returns every item, once
        assert ((items >= 0).sum(1) == min(top_k, len(codes))).all()


def test_decode_equals_the_reference_where_beams_die_and_rows_are_masked():
    # Prefix 0 has one item, prefix 1 seven: a user's beams through prefix 0 run out at once,
    # leaving -1 beams (all-masked rows) beside another user's live ones.
    sizes = (2, 8)
    codes = np.array([[0, 0], *[[1, c] for c in range(7)]])
    model = make_model(sizes, seed=5)
    hist = np.array([[0, -1, -1, -1], [3, 4, 5, 6], [-1] * 4])
    for beam, top_k in [(1, 1), (1, 5), (2, 8), (8, 9)]:
        assert_same_as_reference(model, hist, np.arange(3), codes, SidTrie.from_codes(codes, sizes), beam=beam,
                                 top_k=top_k)
    empty = SidTrie.from_codes(codes, sizes, items=np.zeros(0, dtype=np.int64))
    items = assert_same_as_reference(model, hist, np.arange(3), codes, empty, beam=3, top_k=4)
    assert (items == -1).all()


@pytest.mark.parametrize("sizes", [(3, 4), (5, 1, 3)])
def test_decode_equals_the_reference_on_a_one_item_catalog(sizes):
    codes = np.array([[min(2, k - 1) for k in sizes]])
    model = make_model(sizes, seed=2)
    hist = np.array([[0, -1, -1, -1], [-1] * 4])
    items = assert_same_as_reference(model, hist, np.arange(2), codes, SidTrie.from_codes(codes, sizes), beam=7,
                                     top_k=3)
    assert items.tolist() == [[0, -1, -1], [0, -1, -1]]


def test_a_step_that_fails_to_compile_falls_back_to_eager_with_the_same_results(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: failing)
    sizes = (4, 4, 3)
    codes = with_collisions(np.random.default_rng(0), sizes, 12, 3)
    model = make_model(sizes, seed=1)
    model.compile_step()
    hist = np.array([[0, 1, -1, -1], [2, -1, -1, -1]])
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        assert_same_as_reference(model, hist, np.arange(2), codes, SidTrie.from_codes(codes, sizes), beam=5, top_k=6)
    assert model._compiled_step is None


def test_exact_ties_fall_as_in_the_reference():
    # Codes 0 and 1 of level 0 share an embedding (and so, the head being tied, a logit):
    # their one-child chains end in items with bitwise-equal scores.
    sizes = (4, 3, 2)
    codes = np.array([[0, 2, 1], [1, 2, 1], [2, 0, 0], [2, 0, 1], [2, 1, 0], [3, 1, 1]])
    model = make_model(sizes, seed=4)
    with torch.no_grad():
        first = model.config.level_offsets[0]
        model.tok_emb.weight[first + 1] = model.tok_emb.weight[first]
    hist = np.array([[2, 3, -1, -1], [-1] * 4])
    for beam, top_k in [(1, 2), (2, 2), (4, 6)]:
        items, scores = beam_search(model, hist, np.arange(2), codes, SidTrie.from_codes(codes, sizes), beam=beam,
                                    top_k=top_k)
        ref_items, _ = reference_beam_search(model, hist, np.arange(2), codes, SidTrie.from_codes(codes, sizes),
                                             beam=beam, top_k=top_k)
        assert torch.equal(items, ref_items)  # a bitwise tie: the order is the reference's, not noise's
    assert scores[0, items[0].tolist().index(0)] == scores[0, items[0].tolist().index(1)]  # a real tie
