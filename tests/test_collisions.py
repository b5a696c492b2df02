"""Collision suffixing and stats: properties against brute-force definitions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from freshsid.errors import FreshsidError
from freshsid.sid.collisions import add_suffix, collision_stats

# Small alphabets so collisions are frequent.
codes_strategy = st.integers(1, 4).flatmap(
    lambda levels: arrays(np.int64, st.tuples(st.integers(0, 60), st.just(levels)), elements=st.integers(0, 3))
)


@settings(max_examples=150, deadline=None)
@given(codes=codes_strategy)
def test_suffix_makes_rows_unique_and_only_breaks_ties(codes: np.ndarray) -> None:
    out = add_suffix(codes, suffix_size=len(codes) + 1)
    assert out.dtype == np.int32 and out.shape == (codes.shape[0], codes.shape[1] + 1)
    np.testing.assert_array_equal(out[:, :-1], codes)
    assert len({tuple(r) for r in out.tolist()}) == len(codes)
    # Brute force: the suffix counts earlier rows with the same code.
    seen: Counter[tuple[int, ...]] = Counter()
    for row, suffix in zip(codes.tolist(), out[:, -1].tolist()):
        assert suffix == seen[tuple(row)]
        seen[tuple(row)] += 1


@settings(max_examples=50, deadline=None)
@given(codes=codes_strategy)
def test_suffix_is_deterministic_and_unique_codes_get_zero(codes: np.ndarray) -> None:
    first = add_suffix(codes, suffix_size=len(codes) + 1)
    np.testing.assert_array_equal(first, add_suffix(codes.copy(), suffix_size=len(codes) + 1))
    unique = np.unique(codes, axis=0)
    np.testing.assert_array_equal(add_suffix(unique, suffix_size=1)[:, -1], 0)


@settings(max_examples=80, deadline=None)
@given(codes=codes_strategy)
def test_suffix_size_is_enforced_exactly(codes: np.ndarray) -> None:
    largest = max(Counter(map(tuple, codes.tolist())).values(), default=0)
    add_suffix(codes, suffix_size=max(largest, 1))
    if largest > 1:
        with pytest.raises(FreshsidError, match="suffix size or the codebook size"):
            add_suffix(codes, suffix_size=largest - 1)


@settings(max_examples=120, deadline=None)
@given(codes=codes_strategy)
def test_stats_match_brute_force(codes: np.ndarray) -> None:
    stats = collision_stats(codes, 4)
    groups = Counter(map(tuple, codes.tolist()))
    n = len(codes)
    assert stats["n_items"] == n
    assert stats["max_group_size"] == max(groups.values(), default=0)
    shared = sum(c for c in groups.values() if c > 1)
    assert stats["collision_rate"] == pytest.approx(shared / n if n else 0.0)
    for level in range(codes.shape[1]):
        assert stats["utilisation"][level] == pytest.approx(len(set(codes[:, level].tolist())) / 4)
        assert stats["distinct_prefixes"][level] == len({tuple(r[: level + 1]) for r in codes.tolist()})


def test_stats_worked_example_and_per_level_sizes() -> None:
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 3], [1, 2]])
    stats = collision_stats(codes, [2, 8])
    assert stats == {
        "n_items": 5,
        "collision_rate": 0.6,
        "max_group_size": 3,
        "utilisation": [1.0, 3 / 8],
        "distinct_prefixes": [2, 3],
    }
    np.testing.assert_array_equal(add_suffix(codes, suffix_size=3)[:, -1], [0, 0, 1, 0, 2])


@pytest.mark.parametrize(
    "bad",
    [np.zeros(3, dtype=int), np.zeros((2, 2), dtype=float) + 0.5, -np.ones((2, 2), dtype=int)],
)
def test_bad_codes_raise(bad: np.ndarray) -> None:
    with pytest.raises(FreshsidError):
        add_suffix(bad, suffix_size=4)
    with pytest.raises(FreshsidError):
        collision_stats(bad, 4)


def test_bad_sizes_raise() -> None:
    codes = np.array([[0, 5]])
    with pytest.raises(FreshsidError):
        collision_stats(codes, 4)  # 5 is out of range for K=4
    with pytest.raises(FreshsidError):
        collision_stats(codes, [8])  # one size for two levels
    with pytest.raises(FreshsidError):
        add_suffix(codes, suffix_size=0)
