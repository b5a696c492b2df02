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
