"""SidTrie: masks and lookups equal a brute-force prefix set."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.errors import FreshsidError
from freshsid.sid.trie import SidTrie


@st.composite
def sid_sets(draw, max_levels=3, max_code=4):
    """A codebook shape and a set of distinct SIDs in it, in random row order."""
    sizes = tuple(draw(st.lists(st.integers(1, max_code), min_size=1, max_size=max_levels)))
    space = list(itertools.product(*(range(k) for k in sizes)))
    chosen = draw(st.lists(st.sampled_from(space), unique=True, max_size=min(len(space), 30)))
    codes = np.array(chosen, dtype=np.int64).reshape(len(chosen), len(sizes))
    return sizes, codes


def brute_children(codes: np.ndarray, depth: int) -> dict[tuple, set]:
    out: dict[tuple, set] = {}
    for row in codes:
        out.setdefault(tuple(row[:depth]), set()).add(int(row[depth]))
    return out


@settings(max_examples=60, deadline=None)
@given(sid_sets())
def test_masks_match_brute_force_prefix_sets(case):
    sizes, codes = case
    trie = SidTrie(codes, sizes)
    assert trie.n_items == len(codes)
    for depth in range(len(sizes)):
        children = brute_children(codes, depth)
        assert trie.n_nodes(depth) == (1 if depth == 0 else len(children))
        prefixes = list(children)
        if not prefixes:
            continue
        nodes = trie.walk(np.array(prefixes, dtype=np.int64).reshape(len(prefixes), depth))
        assert (nodes >= 0).all()
        mask = trie.allowed_mask(depth, nodes)
        for row, prefix in zip(mask, prefixes, strict=True):
            assert set(np.flatnonzero(row).tolist()) == children[prefix]
        # children(): each node's edges in code order, each edge leading to the prefix one code longer
        queried = torch.as_tensor(np.concatenate([[-1], nodes, nodes[:1]]))
        owner, edges = trie.children(depth, queried)
        listed = [[int(c) for c in trie.edge_codes[depth][edges[owner == i]]] for i in range(len(queried))]
        assert listed == [[]] + [sorted(children[p]) for p in (*prefixes, prefixes[0])]
        paths = [(*([()] + prefixes + prefixes[:1])[o], int(c))
                 for o, c in zip(owner.tolist(), trie.edge_codes[depth][edges].tolist(), strict=True)]
        assert trie.walk(np.array(paths, dtype=np.int64)).tolist() == edges.tolist()
    # Every SID in the space: valid exactly when chosen; leaves map back to rows.
    space = np.array(list(itertools.product(*(range(k) for k in sizes))), dtype=np.int64)
    members = {tuple(r) for r in codes.tolist()}
    valid = trie.is_valid(space)
    assert valid.tolist() == [tuple(r) in members for r in space.tolist()]
    if len(codes):
        assert trie.item_of(trie.walk(codes)).tolist() == list(range(len(codes)))


@settings(max_examples=40, deadline=None)
@given(sid_sets(), st.data())
def test_restriction_to_item_subset(case, data):
    sizes, codes = case
    subset = data.draw(st.lists(st.integers(0, max(len(codes) - 1, 0)), unique=True)) if len(codes) else []
    trie = SidTrie.from_codes(codes, sizes, items=np.array(subset, dtype=np.int64))
    assert trie.n_items == len(subset)
    assert trie.is_valid(codes).tolist() == [i in set(subset) for i in range(len(codes))]
    if subset:
        leaves = trie.walk(codes[subset])
        assert trie.item_of(leaves).tolist() == subset
        kept = codes[subset]
        for depth in range(len(sizes)):
            children = brute_children(kept, depth)
            nodes = trie.walk(np.array(list(children), dtype=np.int64).reshape(len(children), depth))
            mask = trie.allowed_mask(depth, nodes)
            assert [set(np.flatnonzero(r).tolist()) for r in mask] == list(children.values())


def test_duplicate_sids_raise():
    codes = np.array([[0, 1, 2], [1, 1, 1], [0, 1, 2]])
    with pytest.raises(FreshsidError, match="items 0 and 2 share the SID"):
        SidTrie(codes, (2, 2, 3))
    SidTrie.from_codes(codes, (2, 2, 3), items=[0, 1])  # the duplicate is not kept: fine


def test_dense_lookup_table_with_uncovered_rows():
    # -1 rows (items a table does not code) are fine as long as they are not kept.
    lookup = np.array([[-1, -1], [0, 1], [-1, -1], [1, 0]])
    trie = SidTrie.from_codes(lookup, (2, 2), items=np.array([1, 3]))
    assert trie.item_of(trie.walk(np.array([[1, 0], [0, 1]]))).tolist() == [3, 1]
    with pytest.raises(FreshsidError, match="outside the codebook"):
        SidTrie.from_codes(lookup, (2, 2))


def test_bad_inputs_raise():
    with pytest.raises(FreshsidError):
        SidTrie(np.array([[0, 5]]), (2, 2))  # code out of range
    with pytest.raises(FreshsidError):
        SidTrie(np.array([[0, 1, 0]]), (2, 2))  # wrong number of levels
    with pytest.raises(FreshsidError):
        SidTrie(np.array([[0, 1]]), (2, 2), items=[3])


def test_invalid_nodes_and_codes_and_types():
    codes = np.array([[0, 0], [0, 2], [1, 1]])
    trie = SidTrie(codes, (2, 3))
    nodes = torch.tensor([0, -1, 1])
    mask = trie.allowed_mask(1, nodes)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    assert mask.tolist() == [[True, False, True], [False, False, False], [False, True, False]]
    assert trie.child(1, torch.tensor([0, 0, -1, 0, 0]), torch.tensor([1, 2, 0, 7, -3])).tolist() == [-1, 1, -1, -1, -1]
    out = trie.child(0, np.array([0, 0]), np.array([1, 0]))
    assert isinstance(out, np.ndarray) and out.tolist() == [1, 0]
    assert trie.item_of(np.array([2, -1, 0])).tolist() == [2, -1, 0]
    assert trie.allowed_mask(0, np.array([trie.root])).tolist() == [[True, True]]


def test_empty_trie():
    trie = SidTrie(np.zeros((0, 2), dtype=np.int64), (2, 2))
    assert trie.n_items == 0
    assert not trie.allowed_mask(0, np.array([0])).any()
    assert trie.walk(np.array([[0, 0]])).tolist() == [-1]
