"""Exact scoring of every allowed item: it ranks the whole catalog, scores each item as a full
forward does, and a beam as wide as the catalog returns the same top items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from freshsid.errors import FreshsidError
from freshsid.retriever.decode import beam_search, score_items
from freshsid.retriever.exact import exact_top_k
from freshsid.sid.trie import SidTrie
from reference_decode import same_ranking
from test_decode import cases, make_model, with_collisions


def assert_exact(model, hist, users, codes, trie, *, top_k, batch_size=8):
    """exact_top_k ranks every allowed item once (then -1), each scored as a full forward
    scores it, in the order of a beam as wide as the catalog (ties within 1e-4 may swap)."""
    allowed = sorted(trie.leaf_items.tolist())
    items, scores = exact_top_k(model, hist, users, codes, trie, top_k=top_k, batch_size=batch_size)
    n = min(top_k, len(allowed))
    assert items.shape == scores.shape == (len(hist), top_k)
    assert (items[:, n:] == -1).all() and torch.isinf(scores[:, n:]).all()
    for row in items[:, :n].tolist():
        assert len(set(row)) == n and set(row) <= set(allowed)
        if top_k >= len(allowed):
            assert sorted(row) == allowed
    if n == 0:
        return items
    assert torch.allclose(scores[:, :n], score_items(model, hist, users, codes, trie, items=items[:, :n]), atol=1e-4)
    wide_items, wide_scores = beam_search(model, hist, users, codes, trie, beam=len(allowed), top_k=top_k)
    assert same_ranking(items, scores, wide_items, wide_scores, atol=1e-4)
    return items


@settings(max_examples=30, deadline=None)
@given(cases())
def test_exact_scoring_ranks_every_allowed_item_like_a_catalog_wide_beam(case):
    sizes, codes, allowed, hist, seed = case  # allowed may be empty
    trie = SidTrie.from_codes(codes, sizes, items=allowed)
    items = assert_exact(make_model(sizes, seed), hist, np.arange(len(hist)) % 5, codes, trie, top_k=len(allowed) + 2,
                         batch_size=2)
    if len(allowed) == 0:
        assert (items == -1).all()


@pytest.mark.parametrize("max_group", [1, 3, 9])  # 1: no collisions; 9: most prefixes shared
@pytest.mark.parametrize("top_k", [5, 1000])
def test_exact_top_k_equals_a_catalog_wide_beam_with_and_without_collisions(max_group, top_k):
    rng = np.random.default_rng(max_group)
    sizes = (6, 6, 6, 10)
    codes = with_collisions(rng, sizes, 60, max_group)
    hist = rng.integers(-1, len(codes), (5, 6))
    hist[0] = -1  # a user with no history
    model = make_model(sizes, seed=max_group, max_history=6)
    assert_exact(model, hist, np.arange(5), codes, SidTrie.from_codes(codes, sizes), top_k=top_k)
    allowed = np.sort(rng.choice(len(codes), len(codes) // 3, replace=False))
    assert_exact(model, hist, np.arange(5), codes, SidTrie.from_codes(codes, sizes, items=allowed), top_k=top_k)


def test_exact_scoring_checks_its_arguments_and_restores_the_mode():
    sizes = (3, 2)
    codes = np.array([[0, 0], [1, 1], [2, 0]])
    model = make_model(sizes).train()
    trie = SidTrie.from_codes(codes, sizes)
    items, _ = exact_top_k(model, np.array([[0, 1]]), np.array([0]), codes, trie, top_k=3)
    assert model.training and sorted(items[0].tolist()) == [0, 1, 2]
    with pytest.raises(FreshsidError, match="top_k"):
        exact_top_k(model, np.array([[0]]), np.array([0]), codes, trie, top_k=0)
    with pytest.raises(FreshsidError, match="SID shape"):
        exact_top_k(model, np.array([[0]]), np.array([0]), codes, SidTrie(codes, (3, 3)), top_k=2)


def test_the_recommender_ranks_by_exact_scores_and_refuses_a_beam_beside_them():
    from freshsid.retriever.pipeline import Recommender
    from freshsid.sid.table import SidTable

    sizes = (4, 4, 3)
    codes = with_collisions(np.random.default_rng(2), sizes, 12, 3)
    table = SidTable(items=np.arange(len(codes)), codes=codes.astype(np.int32), codebook_sizes=sizes,
                     item_ids=np.arange(len(codes)).astype(str))
    model = make_model(sizes, seed=2)
    recommender = Recommender(model, table, allowed_items=np.arange(0, len(codes), 2))
    hist, users = np.array([[0, 3, -1, -1], [5, 1, 2, 4]]), np.array([7, 8])
    items, scores = recommender(hist, users, top_k=len(codes), exact=True)
    beam_items, beam_scores = recommender(hist, users, top_k=len(codes), beam=len(codes))
    assert same_ranking(torch.from_numpy(items), torch.from_numpy(scores), torch.from_numpy(beam_items),
                        torch.from_numpy(beam_scores), atol=1e-4)
    assert sorted(items[0][items[0] >= 0].tolist()) == list(range(0, len(codes), 2))
    with pytest.raises(FreshsidError, match="no beam"):
        recommender(hist, users, top_k=3, beam=3, exact=True)
