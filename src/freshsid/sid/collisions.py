"""Collision suffixing: make every item's Semantic ID unique.

Several items can land on the same L-level code. Following TIGER (Rajput et
al., 2023) and the reference paper, an extra last level numbers the items
inside each such group (0, 1, 2, ... by row index), so the (L+1)-level ID is
unique and deterministic. ``collision_stats`` summarises how crowded the codes
are, which is what to watch when choosing codebook and suffix sizes.

Everything is vectorised around one stable lexicographic sort of the code rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from freshsid.errors import FreshsidError


def _as_codes(codes: object) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise FreshsidError(f"codes have shape {arr.shape}; pass a 2-D (items, levels) integer array.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise FreshsidError(f"codes have dtype {arr.dtype}; pass integer codes from a tokenizer.")
    if arr.size and arr.min() < 0:
        raise FreshsidError("codes contain negative values; pass codes produced by a tokenizer.")
    return arr.astype(np.int64, copy=False)


def _sorted_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable lexicographic order of the rows of codes (n, L).

    Returns order (n,) (row indices sorted by code, ties by row index),
    changed (n-1, L) bool (whether sorted row i+1 differs from row i within
    its first l+1 columns) and rank (n,) (position of each sorted row inside
    its group of identical full codes).
    """
    n = codes.shape[0]
    # lexsort sorts by the last key first and is stable, so equal codes keep row order.
    order = np.lexsort(codes.T[::-1])
    ordered = codes[order]
    changed = np.logical_or.accumulate(ordered[1:] != ordered[:-1], axis=1)
    starts = np.flatnonzero(np.r_[True, changed[:, -1]])  # n = 0 gives one empty group: rank stays empty
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return order, changed, rank


def add_suffix(codes: np.ndarray, *, suffix_size: int) -> np.ndarray:
    """Append a collision-breaking level: codes (n, L) -> (n, L+1) int32.

    The new last column is each item's index within its group of items sharing
    the same L-level code, counted in row order, so the first L columns are
    unchanged and the full rows are unique. Raises FreshsidError if a group has
    more than ``suffix_size`` items.
    """
    codes = _as_codes(codes)
    if isinstance(suffix_size, bool) or not isinstance(suffix_size, (int, np.integer)) or suffix_size < 1:
        raise FreshsidError(f"suffix_size must be an integer >= 1, got {suffix_size!r}; fix the tokenizer settings.")
    order, _, rank = _sorted_groups(codes)
    largest = int(rank.max()) + 1 if rank.size else 0
    if largest > suffix_size:
        raise FreshsidError(
            f"{largest} items share one code but suffix_size is {suffix_size}; "
            "raise the suffix size or the codebook size."
        )
    suffix = np.empty(codes.shape[0], dtype=np.int64)
    suffix[order] = rank
    return np.column_stack([codes, suffix]).astype(np.int32)


def collision_stats(codes: np.ndarray, codebook_sizes: int | Sequence[int]) -> dict[str, Any]:
    """How crowded the codes (n, L) are, before any suffix.

    Returns a JSON-able dict:
      n_items; collision_rate (share of items whose full L-level code is shared
      with another item); max_group_size (most items on one code);
      utilisation (per level, distinct codes used / codebook size);
      distinct_prefixes (per prefix length 1..L, number of distinct prefixes).
    """
    codes = _as_codes(codes)
    n, n_levels = codes.shape
    sizes = [codebook_sizes] * n_levels if np.isscalar(codebook_sizes) else list(codebook_sizes)
    if len(sizes) != n_levels or any(int(k) < 1 for k in sizes):
        raise FreshsidError(
            f"codebook_sizes {codebook_sizes!r} does not give one positive size per level for {n_levels} levels; "
            "pass an int or one size per level."
        )
    if n and (codes.max(axis=0) >= np.asarray(sizes)).any():
        raise FreshsidError("codes exceed the given codebook sizes; pass the sizes the tokenizer was fitted with.")
    if n == 0:
        return {"n_items": 0, "collision_rate": 0.0, "max_group_size": 0,
                "utilisation": [0.0] * n_levels, "distinct_prefixes": [0] * n_levels}
    _, changed, rank = _sorted_groups(codes)
    starts = np.flatnonzero(np.r_[True, changed[:, -1]])
    group_sizes = np.diff(np.r_[starts, n])
    used = [np.unique(codes[:, level]).size for level in range(n_levels)]
    return {
        "n_items": int(n),
        "collision_rate": float(group_sizes[group_sizes > 1].sum() / n),
        "max_group_size": int(rank.max()) + 1,
        "utilisation": [u / int(k) for u, k in zip(used, sizes)],
        "distinct_prefixes": [int(c) + 1 for c in changed.sum(axis=0)],
    }
