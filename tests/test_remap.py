"""Carrying a checkpoint's code embeddings onto a refreshed table (freshsid.retriever.remap)."""

import numpy as np
import pytest
import torch

from freshsid.retriever.model import Retriever, RetrieverConfig
from freshsid.retriever.remap import code_mixing, remap_code_embeddings
from freshsid.sid.table import SidTable

SIZES = (4, 4, 8)  # two semantic levels and the collision suffix


def table(items, codes):
    items = np.asarray(items)
    return SidTable(items=items, codes=np.asarray(codes, dtype=np.int32), codebook_sizes=SIZES,
                    item_ids=np.array([f"i{i}" for i in items]))


def model():
    torch.manual_seed(0)
    return Retriever(RetrieverConfig(codebook_sizes=SIZES, width=8, n_layers=1, n_heads=2, ffn=16, user_buckets=4,
                                     max_history=3))


def rows(net, level):
    start = net.config.level_offsets[level]
    return net.tok_emb.weight[start : start + SIZES[level]].detach().clone()


def test_a_relabelled_level_carries_each_row_to_its_new_code_and_leaves_the_rest():
    rng = np.random.default_rng(0)
    codes = np.column_stack([np.arange(16) % 4, np.arange(16) // 4, np.zeros(16, int)])
    perm = rng.permutation(4)
    moved = codes.copy()
    moved[:, 0] = perm[codes[:, 0]]
    net = model()
    before = [rows(net, level) for level in range(3)]
    weight = net.tok_emb.weight.detach().clone()
    remap_code_embeddings(net, table(np.arange(16), codes), table(np.arange(16), moved), levels=1)
    after = [rows(net, level) for level in range(3)]
    assert torch.equal(after[0][perm], before[0])  # new code perm[c] reads and scores as legacy code c did
    assert torch.equal(after[1], before[1]) and torch.equal(after[2], before[2])
    start, stop = net.config.level_offsets[0], net.config.level_offsets[0] + SIZES[0]
    untouched = torch.ones(len(weight), dtype=torch.bool)
    untouched[start:stop] = False
    assert torch.equal(net.tok_emb.weight.detach()[untouched], weight[untouched])  # user buckets etc.


def test_a_code_gathering_several_legacy_codes_takes_their_item_weighted_mean():
    legacy = table([0, 1, 2, 3, 9], [[0, 0, 0], [0, 1, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    # items 0, 1 (legacy code 0) and 2 (legacy code 1) now share code 3; item 3 keeps code 2;
    # item 9 left the catalog; item 7 is new and has no legacy code to carry
    refreshed = table([0, 1, 2, 3, 7], [[3, 0, 0], [3, 1, 0], [3, 2, 0], [2, 0, 0], [1, 0, 0]])
    mixing = code_mixing(legacy, refreshed, 0)
    np.testing.assert_allclose(mixing[3], [2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(mixing[2], [0, 0, 1, 0])
    assert not mixing[0].any() and not mixing[1].any()
    net = model()
    before = rows(net, 0)
    remap_code_embeddings(net, legacy, refreshed, levels=1)
    after = rows(net, 0)
    torch.testing.assert_close(after[3], (2 * before[0] + before[1]) / 3)
    assert torch.equal(after[2], before[2])
    assert torch.equal(after[:2], before[:2])  # carried by no common item: kept


def test_remapping_refuses_another_shape_or_too_many_levels():
    legacy = table([0, 1], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="within 0..2"):
        remap_code_embeddings(model(), legacy, legacy, levels=3)
    other = SidTable(items=np.array([0, 1]), codes=np.array([[0, 0], [1, 0]], dtype=np.int32), codebook_sizes=(4, 8),
                     item_ids=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="one SID shape"):
        remap_code_embeddings(model(), legacy, other, levels=1)


def test_weights_split_a_merged_codes_mass_by_them_and_must_be_positive():
    legacy = table([0, 1, 2], [[0, 0, 0], [0, 1, 0], [1, 0, 0]])
    refreshed = table([0, 1, 2], [[3, 0, 0], [3, 1, 0], [3, 2, 0]])  # all three merged into code 3
    weights = np.array([1.0, 1.0, 6.0])  # item 2 (legacy code 1) has most events
    np.testing.assert_allclose(code_mixing(legacy, refreshed, 0, weights)[3], [0.25, 0.75, 0, 0])
    net = model()
    before = rows(net, 0)
    remap_code_embeddings(net, legacy, refreshed, levels=1, weights=weights)
    torch.testing.assert_close(rows(net, 0)[3], 0.25 * before[0] + 0.75 * before[1])
    with pytest.raises(ValueError, match="positive"):
        remap_code_embeddings(model(), legacy, refreshed, levels=1, weights=np.array([1.0, 0.0, 1.0]))


def test_a_prefix_remap_is_the_identity_when_nothing_changed_and_exact_when_codes_hold_one_item():
    rng = np.random.default_rng(1)
    legacy = table(np.arange(6), np.column_stack([[0, 0, 1, 1, 2, 3], [0, 1, 0, 1, 2, 3], np.zeros(6, int)]))
    net = model()
    before = net.tok_emb.weight.detach().clone()
    remap_code_embeddings(net, legacy, legacy, levels=2, basis="prefixes")
    torch.testing.assert_close(net.tok_emb.weight.detach(), before)
    # every refreshed code of both levels holds one item: each item's refreshed prefix sums
    # to its legacy prefix at every level
    legacy = table(np.arange(4), np.column_stack([[0, 0, 1, 1], [0, 1, 0, 1], np.zeros(4, int)]))
    refreshed = table(np.arange(4), np.column_stack([rng.permutation(4), rng.permutation(4), np.zeros(4, int)]))
    net = model()
    old = [rows(net, level) for level in range(2)]
    remap_code_embeddings(net, legacy, refreshed, levels=2, basis="prefixes")
    new = [rows(net, level) for level in range(2)]
    for level in range(2):
        legacy_prefix = sum(old[d][legacy.codes[:, d]] for d in range(level + 1))
        refreshed_prefix = sum(new[d][refreshed.codes[:, d]] for d in range(level + 1))
        torch.testing.assert_close(refreshed_prefix, legacy_prefix)


def test_items_a_code_merged_start_apart_at_the_next_level_from_their_prefixes_only():
    # items 0 and 1 had different first codes and the same second; the refresh merges them
    # into first code 2 and gives them second codes 0 and 1
    legacy = table([0, 1], [[0, 3, 0], [1, 3, 0]])
    refreshed = table([0, 1], [[2, 0, 0], [2, 1, 0]])
    by_codes, by_prefixes = model(), model()
    old = [rows(by_codes, level) for level in range(2)]
    remap_code_embeddings(by_codes, legacy, refreshed, levels=2)
    remap_code_embeddings(by_prefixes, legacy, refreshed, levels=2, basis="prefixes")
    merged = (old[0][0] + old[0][1]) / 2
    for net in (by_codes, by_prefixes):
        torch.testing.assert_close(rows(net, 0)[2], merged)
    # per-level codes: both second codes read legacy code 3's row, the two items look alike
    torch.testing.assert_close(rows(by_codes, 1)[0], rows(by_codes, 1)[1])
    # whole prefixes: each second code carries its item's own first code beyond the merged row
    torch.testing.assert_close(rows(by_prefixes, 1)[0], old[0][0] + old[1][3] - merged)
    torch.testing.assert_close(rows(by_prefixes, 1)[1], old[0][1] + old[1][3] - merged)
    assert not torch.allclose(rows(by_prefixes, 1)[0], rows(by_prefixes, 1)[1])
