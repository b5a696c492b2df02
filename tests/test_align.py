import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.errors import FreshsidError
from freshsid.sid.align import align, cooccurrence, match, stick
from freshsid.sid.table import SidTable


def table(codes, sizes, items=None):
    codes = np.asarray(codes, dtype=np.int32)
    items = np.arange(len(codes)) if items is None else np.asarray(items)
    return SidTable(items=items, codes=codes, codebook_sizes=tuple(sizes), item_ids=items.astype(str))


@st.composite
def unique_tables(draw, max_items=40):
    levels = draw(st.integers(1, 3))
    sizes = [draw(st.integers(2, 6)) for _ in range(levels)]
    n = draw(st.integers(1, max_items))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    prefix = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    # suffix = rank inside the prefix group, so rows are unique
    _, inv = np.unique(prefix, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    suffix = np.zeros(n, dtype=np.int64)
    for g in np.unique(inv):
        rows = np.flatnonzero(inv == g)
        suffix[rows] = np.arange(len(rows))
    sizes = [*sizes, max(n, 1)]
    return np.column_stack([prefix, suffix]), sizes, seed


@settings(max_examples=80, deadline=None)
@given(unique_tables())
def test_relabelled_table_aligns_back_exactly(data):
    codes, sizes, seed = data
    rng = np.random.default_rng(seed + 1)
    legacy = table(codes, sizes)
    relabelled = codes.copy()
    for level, size in enumerate(sizes[:-1]):
        relabelled[:, level] = rng.permutation(size)[codes[:, level]]
    for method in ("greedy", "hungarian"):
        aligned, report = align(legacy, table(relabelled, sizes), method=method)
        assert np.array_equal(aligned.codes, legacy.codes)
        assert report["sid_agreement_after"] == 1.0


@settings(max_examples=80, deadline=None)
@given(unique_tables(), unique_tables())
def test_alignment_is_a_permutation_and_never_duplicates(a, b):
    codes_a, sizes_a, _ = a
    codes_b, sizes_b, _ = b
    n = min(len(codes_a), len(codes_b))
    if sizes_a[:-1] != sizes_b[:-1]:
        return
    sizes = [*sizes_a[:-1], max(sizes_a[-1], sizes_b[-1])]
    legacy = table(codes_a, sizes)
    refreshed = table(codes_b, sizes, items=np.arange(len(codes_b)) + len(codes_a) - n)  # partial overlap
    for method in ("greedy", "hungarian"):
        aligned, report = align(legacy, refreshed, method=method)
        assert len(np.unique(aligned.codes, axis=0)) == len(aligned.codes)
        assert (aligned.codes < np.array(sizes)).all() and (aligned.codes >= 0).all()
        # each semantic level is relabelled by a bijection of the codebook
        for level in range(len(sizes) - 1):
            pairs = set(zip(refreshed.codes[:, level].tolist(), aligned.codes[:, level].tolist()))
            assert len({p[0] for p in pairs}) == len(pairs) == len({p[1] for p in pairs})
        for lv in report["levels"]:
            assert 0.0 <= lv["kept_before"] <= 1.0 and 0.0 <= lv["kept_after"] <= 1.0


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10_000))
def test_greedy_never_beats_hungarian(size, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, (size, size)) * rng.integers(0, 2, (size, size))
    g, h = match(counts, "greedy"), match(counts, "hungarian")
    assert sorted(g.tolist()) == list(range(size)) == sorted(h.tolist())
    idx = np.arange(size)
    assert counts[idx, g].sum() <= counts[idx, h].sum()


def test_identity_when_nothing_changed():
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0], [1, 2, 0]])
    t = table(codes, [3, 3, 2])
    aligned, report = align(t, t, method="greedy")
    assert np.array_equal(aligned.codes, codes)
    assert [lv["kept_before"] for lv in report["levels"]] == [1.0, 1.0]
    assert aligned.meta["parent"] == t.content_hash


def test_new_items_are_mapped_and_shapes_checked():
    legacy = table([[0, 0, 0], [1, 1, 0]], [2, 2, 1])
    refreshed = table([[1, 0, 0], [0, 1, 0], [0, 0, 0]], [2, 2, 1], items=[0, 1, 2])
    aligned, _ = align(legacy, refreshed, method="hungarian")
    assert aligned.codes[:2].tolist() == [[0, 0, 0], [1, 1, 0]]
    assert aligned.codes[2].tolist() == [1, 0, 0]  # new item follows the same relabelling
    with pytest.raises(FreshsidError):
        align(legacy, table([[0, 0, 0]], [3, 2, 1]))


def test_cooccurrence_counts():
    c = cooccurrence(np.array([0, 0, 1]), np.array([1, 1, 0]), 2)
    assert c.tolist() == [[0, 2], [1, 0]]


@settings(max_examples=60, deadline=None)
@given(unique_tables(), unique_tables(), st.floats(0, 1), st.integers(0, 2**31))
def test_sticking_keeps_the_chosen_items_legacy_sids_and_never_duplicates(a, b, share, seed):
    (ca, sa, _), (cb, sb, _) = a, b
    if len(sa) != len(sb):
        return
    sizes = [max(x, y) for x, y in zip(sa, sb)]
    sizes[-1] = len(ca) + len(cb)  # room in the suffix level for every item
    legacy, refreshed = table(ca, sizes), table(cb, sizes)
    aligned, _ = align(legacy, refreshed)
    common = np.intersect1d(legacy.items, aligned.items)
    keep = np.random.default_rng(seed).permutation(common)[: int(share * len(common))]
    stuck = stick(legacy, aligned, keep)
    assert len(np.unique(stuck.codes, axis=0)) == len(stuck.codes)
    assert np.array_equal(stuck.codes_for(keep), legacy.codes_for(keep))
    moved = np.setdiff1d(aligned.items, keep)
    assert np.array_equal(stuck.codes_for(moved)[:, :-1], aligned.codes_for(moved)[:, :-1])
    assert stuck.meta["stats"]["alignment"]["kept_items"] == len(keep)


def test_sticking_every_common_item_gives_back_the_legacy_codes():
    legacy = table([[0, 0], [0, 1], [1, 0]], [2, 4])
    refreshed = table([[1, 0], [0, 0], [0, 1], [1, 1]], [2, 4], items=[0, 1, 2, 3])
    aligned, _ = align(legacy, refreshed)
    stuck = stick(legacy, aligned, legacy.items)
    assert np.array_equal(stuck.codes_for(legacy.items), legacy.codes)
    assert stuck.meta["stats"]["alignment"]["prefix_agreement_after"] == 1.0


@pytest.mark.parametrize("tokenizer", ["rqkmeans", "rqvae"])
def test_an_aligned_table_keeps_the_refreshed_tokenizer_relabelled_as_its_codes_were(tokenizer):
    """Whatever the refreshed tokenizer gives a vector, the aligned table's tokenizer gives
    its aligned label at every level: new items are coded in the aligned vocabulary."""
    from freshsid.config import SidConfig
    from freshsid.sid.build import build_table, make_tokenizer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    items = np.arange(300)
    extra = {"epochs": 3} if tokenizer == "rqvae" else {}
    cfg = SidConfig(tokenizer=tokenizer, n_levels=2, codebook_size=8, suffix_size=64, **extra)
    legacy, _ = build_table(X, items, items.astype(str), cfg, window="0:1")
    moved = cfg.model_copy(update={"seed": 1})
    refreshed, _ = build_table(X + 0.3 * rng.normal(size=X.shape).astype(np.float32), items, items.astype(str), moved,
                               window="0:1")
    aligned, _ = align(legacy, refreshed)
    unseen = rng.normal(size=(50, 8)).astype(np.float32)
    code = lambda table: make_tokenizer(moved, init_state=table.tokenizer_state).fit(X).transform(unseen)  # noqa: E731
    before, after = code(refreshed), code(aligned)
    for level in range(2):
        perm = np.zeros(8, int)
        perm[refreshed.codes[:, level]] = aligned.codes[:, level]
        assert not np.array_equal(perm, np.arange(8))  # (alignment moved labels, so the check can fail)
        assert np.array_equal(perm[before[:, level]], after[:, level])
