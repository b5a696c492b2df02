"""Align a refreshed SidTable to the legacy vocabulary (Baikalov et al., SIGIR 2026).

Refitting a tokenizer renumbers every code. Per semantic level, alignment finds a
one-to-one map new code -> old code that keeps as many common items as possible
on their old code: the co-occurrence counts ``C[a, b]`` (items with new code a
and old code b) define an assignment problem, solved exactly (``hungarian``,
scipy's ``linear_sum_assignment``) or greedily by descending count. New codes
left without a partner take the unused old codes in order. The map is applied to
every item of the refreshed table, items new since the legacy table included.

Relabelling each level by a permutation maps distinct prefixes to distinct
prefixes, so collision groups are unchanged; the suffix level is then
re-resolved so that an item whose aligned prefix equals its legacy prefix keeps
its legacy suffix. The refreshed tokenizer's codebook rows move with their labels,
so the aligned table codes items it has not seen in its own (aligned) vocabulary.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from freshsid.errors import FreshsidError
from freshsid.sid.table import SidTable

Method = Literal["greedy", "hungarian"]
METHODS: tuple[str, ...] = ("greedy", "hungarian")


def cooccurrence(new: np.ndarray, old: np.ndarray, size: int) -> np.ndarray:
    """(size, size) int64 counts C[a, b] of items with new code a and old code b."""
    return np.bincount(new * size + old, minlength=size * size).reshape(size, size)


def match(counts: np.ndarray, method: Method) -> np.ndarray:
    """A permutation ``perm`` (K,) with ``perm[a]`` = old code for new code a."""
    size = len(counts)
    if method == "hungarian":
        rows, cols = linear_sum_assignment(counts, maximize=True)
        perm = np.empty(size, dtype=np.int64)
        perm[rows] = cols
        return perm
    if method != "greedy":
        raise FreshsidError(f"Alignment method {method!r} is unknown; use one of {', '.join(METHODS)}.")
    perm = np.full(size, -1, dtype=np.int64)
    taken = np.zeros(size, dtype=bool)
    flat = np.flatnonzero(counts)
    # Descending count; ties broken by (new, old) so the result is deterministic.
    for key in flat[np.argsort(-counts.ravel()[flat], kind="stable")]:
        a, b = divmod(int(key), size)
        if perm[a] < 0 and not taken[b]:
            perm[a], taken[b] = b, True
    perm[perm < 0] = np.flatnonzero(~taken)  # leftover new codes take unused old ones in order
    return perm


def align(legacy: SidTable, refreshed: SidTable, *, method: Method = "hungarian") -> tuple[SidTable, dict]:
    """Relabel ``refreshed`` onto ``legacy``'s vocabulary.

    Returns the aligned table (its parent is the legacy table) and diagnostics per
    level: the share of common items keeping their legacy code before and after
    alignment, the matched count, and whole-SID agreement.
    """
    if legacy.codebook_sizes != refreshed.codebook_sizes:
        raise FreshsidError(
            f"Cannot align tables of different shapes ({list(legacy.codebook_sizes)} vs "
            f"{list(refreshed.codebook_sizes)}); refit the refreshed tokenizer with the legacy sizes."
        )
    common, in_new, in_old = np.intersect1d(refreshed.items, legacy.items, return_indices=True)
    if len(common) == 0:
        raise FreshsidError("The legacy and refreshed tables share no items, so there is nothing to align on.")
    old = legacy.codes[in_old].astype(np.int64)
    codes = refreshed.codes.astype(np.int64).copy()
    levels, perms = [], []
    for level in range(refreshed.n_levels):
        size = refreshed.codebook_sizes[level]
        counts = cooccurrence(codes[in_new, level], old[:, level], size)
        perm = match(counts, method)
        before = float(np.trace(counts)) / len(common)
        matched = int(counts[np.arange(size), perm].sum())
        codes[:, level] = perm[codes[:, level]]
        perms.append(perm)
        levels.append({"level": level, "kept_before": before, "kept_after": matched / len(common), "matched": matched})

    codes[:, -1] = resolve_suffix(codes, in_new, old)
    report = {
        "method": method,
        "common_items": int(len(common)),
        "levels": levels,
        "sid_agreement_before": _whole_sid_agreement(refreshed.codes[in_new], old),
        "sid_agreement_after": _whole_sid_agreement(codes[in_new], old),
        "prefix_agreement_after": _whole_sid_agreement(codes[in_new, :-1], old[:, :-1]),
    }
    # The parent is the legacy table's content hash: stable whether or not it was ever saved.
    meta = {**refreshed.meta, "parent": legacy.content_hash, "stats": {**refreshed.meta.get("stats", {}), "alignment": report}}
    return replace(refreshed, codes=codes.astype(np.int32), meta=meta,
                   tokenizer_state=relabel_state(refreshed.tokenizer_state, perms)), report


def relabel_state(state: dict[str, np.ndarray] | None, perms: list[np.ndarray]) -> dict[str, np.ndarray] | None:
    """A tokenizer's state (``codebooks`` (L, K, d), RQ-KMeans' or RQ-VAE's) with the row of
    code ``a`` at level ``l`` moved to label ``perms[l][a]``: it then assigns every vector
    the relabelled codes (the encoder and decoder do not depend on labels)."""
    if state is None:
        return None
    codebooks = np.array(state["codebooks"], copy=True)
    for level, perm in enumerate(perms):
        codebooks[level, perm] = state["codebooks"][level]
    return {**state, "codebooks": codebooks}


def stick(legacy: SidTable, aligned: SidTable, keep: np.ndarray) -> SidTable:
    """``aligned`` with the items ``keep`` (item indices in both tables) back on their legacy SIDs.

    Beyond the paper: a refresh that moves only some items' codes (those whose
    behaviour moved, chosen by the caller). The suffix level is re-resolved as in
    :func:`align`, so every SID stays unique; the alignment diagnostics are recomputed
    on the result and record ``kept_items``.
    """
    common, in_new, in_old = np.intersect1d(aligned.items, legacy.items, return_indices=True)
    old = legacy.codes[in_old].astype(np.int64)
    codes = aligned.codes.astype(np.int64).copy()
    back = np.isin(common, keep)
    codes[in_new[back], :-1] = old[back, :-1]
    codes[:, -1] = resolve_suffix(codes, in_new, old)
    if codes[:, -1].max(initial=0) >= aligned.codebook_sizes[-1]:
        raise FreshsidError(f"Keeping legacy codes crowds a prefix beyond the {aligned.codebook_sizes[-1]} suffix codes; "
                            "move more items or raise the suffix size.")
    report = dict(aligned.meta["stats"]["alignment"])
    report["levels"] = [{**level, "kept_after": float((codes[in_new, d] == old[:, d]).mean())}
                        for d, level in enumerate(report["levels"])]
    report.update(kept_items=int(back.sum()), sid_agreement_after=_whole_sid_agreement(codes[in_new], old),
                  prefix_agreement_after=_whole_sid_agreement(codes[in_new, :-1], old[:, :-1]))
    meta = {**aligned.meta, "stats": {**aligned.meta["stats"], "alignment": report}}
    return replace(aligned, codes=codes.astype(np.int32), meta=meta)


def resolve_suffix(codes: np.ndarray, in_new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """(n,) suffix codes after alignment.

    An item whose aligned prefix equals its legacy prefix claims its legacy suffix
    (claims never clash: legacy SIDs are unique). The other items of a prefix group
    take the smallest suffixes no claim uses, in the order of their refreshed suffix.
    Vectorised (no loop over groups, which a million-item catalog has by the hundred
    thousand): the j-th free value of a group is j plus the number of its claims c_k
    (sorted, k from 0) with c_k - k <= j.

    Args:
        codes: (n, D) aligned prefixes plus the refreshed suffix in the last column.
        in_new: (c,) rows of the common items; old: (c, D) their legacy codes.
    """
    n = len(codes)
    claim = np.full(n, -1, dtype=np.int64)
    same_prefix = (codes[in_new, :-1] == old[:, :-1]).all(axis=1)
    claim[in_new[same_prefix]] = old[same_prefix, -1]
    _, group = np.unique(codes[:, :-1], axis=0, return_inverse=True)
    group = group.reshape(-1)
    suffix = claim.copy()
    free = np.flatnonzero(claim < 0)
    free = free[np.lexsort((codes[free, -1], group[free]))]  # by group, then refreshed suffix
    rank = _position_in_run(group[free])
    taken = np.flatnonzero(claim >= 0)
    taken = taken[np.lexsort((claim[taken], group[taken]))]
    span = n + int(claim.max(initial=0)) + 2  # keys group * span + value never overlap between groups
    keys = group[taken] * span + (claim[taken] - _position_in_run(group[taken]))
    below = np.searchsorted(keys, group[free] * span + rank, side="right") - np.searchsorted(keys, group[free] * span)
    suffix[free] = rank + below
    return suffix


def _position_in_run(sorted_groups: np.ndarray) -> np.ndarray:
    """(m,) the position of each entry within its run of equal values."""
    if len(sorted_groups) == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    return np.arange(len(sorted_groups)) - np.maximum.accumulate(np.where(first, np.arange(len(sorted_groups)), 0))


def _whole_sid_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).all(axis=1).mean()) if len(a) else 0.0
