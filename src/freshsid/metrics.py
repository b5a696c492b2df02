"""Recall@K and nDCG@K over ranked lists, vectorised over users.

Recall@K = hits in the top K / min(|labels|, K); nDCG@K uses binary relevance
and the ideal DCG of min(|labels|, K) hits (the convention of the SID-staleness
paper, so that a user with more than K labels can still score 1). Note that this
recall is non-decreasing in K only for K >= |labels|: below that its denominator
grows with K too.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200, 500)


def hit_matrix(ranked: np.ndarray, label_indptr: np.ndarray, label_items: np.ndarray) -> np.ndarray:
    """(m, k_max) bool: whether ``ranked[u, r]`` is one of user u's labels.

    Args:
        ranked: (m, k_max) item index, -1 where the list is shorter.
        label_indptr, label_items: CSR labels per user (items unique per user).
    """
    m, k_max = ranked.shape
    counts = np.diff(label_indptr)
    owner = np.repeat(np.arange(m), counts)
    # Encode (user, item) pairs as one int64 key and test membership with a sorted search.
    n_items = int(max(label_items.max(initial=-1), ranked.max(initial=-1))) + 2
    label_keys = np.sort(owner * n_items + label_items)
    keys = np.arange(m)[:, None] * n_items + ranked
    pos = np.searchsorted(label_keys, keys)
    found = label_keys[np.minimum(pos, len(label_keys) - 1)] == keys if len(label_keys) else np.zeros_like(keys, bool)
    return found & (ranked >= 0)


def per_user(
    ranked: np.ndarray,
    label_indptr: np.ndarray,
    label_items: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, np.ndarray]:
    """Recall@K and nDCG@K of each user: ``{"recall@10": (m,) float64, ...}`` in the order
    of ``ranked``'s rows. :func:`recall_ndcg` is their mean; keeping them lets a comparison
    of two policies be paired user by user (:mod:`freshsid.evaluate.intervals`).

    ``ranked`` may have fewer than max(ks) columns (a shorter list just cannot hit
    more); users with no labels must not be passed.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    counts = np.diff(label_indptr)
    if len(ranked) == 0:
        raise ValueError("no users to evaluate")
    if (counts == 0).any():
        raise ValueError("every user needs at least one label")
    hits = hit_matrix(ranked, label_indptr, label_items)
    width = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, max(ks) + 2)))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        col = min(k, width) - 1
        denom = np.minimum(counts, k)
        got = cum_hits[:, col] if col >= 0 else np.zeros(len(ranked))
        dcg = cum_dcg[:, col] if col >= 0 else np.zeros(len(ranked))
        out[f"recall@{k}"] = got / denom
        out[f"ndcg@{k}"] = dcg / ideal[denom - 1]
    return out


def recall_ndcg(
    ranked: np.ndarray,
    label_indptr: np.ndarray,
    label_items: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, float]:
    """Mean Recall@K and nDCG@K over users: ``{"recall@10": ..., "ndcg@10": ...}``
    (the means of :func:`per_user`)."""
    return {key: float(np.mean(values)) for key, values in per_user(ranked, label_indptr, label_items, ks).items()}
