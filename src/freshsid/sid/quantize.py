"""Shared numeric core of the residual quantizers (numpy in, numpy out).

Both tokenizers (RQ-KMeans and RQ-VAE) reduce to the same few operations, which
live here once: validate an input matrix, find each row's nearest codeword
(plain or size-balanced), encode residually level by level, reconstruct from
codes, run seeded k-means (faiss), average points per code, and choose
replacements for dead codes.

Shapes: ``n`` rows, ``d`` dimensions, ``K`` codes per level, ``L`` levels.
Everything is float32 except codes (int32).
"""

from __future__ import annotations

import hashlib
import math

import faiss
import numpy as np

from freshsid.errors import FreshsidError

# Rows per distance block: 65,536 x 256 float32 is 64 MB, so a 1M x 64 input
# never materialises its full 1 GB distance matrix.
CHUNK_ROWS = 65_536


def as_matrix(X: object, *, name: str = "X", min_rows: int = 1) -> np.ndarray:
    """Validate ``X`` and return it as a C-contiguous float32 (n, d) array.

    This is the one conversion at the estimator boundary; the core below
    assumes its output. Raises FreshsidError for non-2D, empty, non-finite
    input or fewer than ``min_rows`` rows.
    """
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError):
        raise FreshsidError(f"{name} is not array-like; pass a 2-D numeric array of item embeddings.") from None
    if arr.ndim != 2:
        raise FreshsidError(f"{name} has {arr.ndim} dimension(s), expected a 2-D (items, dims) array; reshape it.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FreshsidError(f"{name} has dtype {arr.dtype}, expected real numbers; convert it to float32.")
    if arr.shape[1] == 0:
        raise FreshsidError(f"{name} has zero columns; pass embeddings with at least one dimension.")
    if arr.shape[0] < min_rows:
        raise FreshsidError(
            f"{name} has {arr.shape[0]} rows but at least {min_rows} are needed (one per code); "
            "pass more items or lower codebook_size."
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise FreshsidError(f"{name} contains NaN or infinite values; clean or drop those rows first.")
    return arr


def check_int(value: object, *, name: str, minimum: int) -> int:
    """Validate an integer hyper-parameter (bools refused) and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FreshsidError(f"{name} must be an integer >= {minimum}, got {value!r}; fix the tokenizer settings.")
    return int(value)


def as_codebooks(init: object, *, n_levels: int, codebook_size: int, dim: int) -> np.ndarray:
    """Validate warm-start codebooks and return them as float32 (L, K, d)."""
    arr = np.ascontiguousarray(np.asarray(init, dtype=np.float32))
    expected = (n_levels, codebook_size, dim)
    if arr.shape != expected or not np.isfinite(arr).all():
        raise FreshsidError(
            f"init_codebooks has shape {arr.shape} but the settings need finite values of shape {expected}; "
            "pass the fitted codebooks_ of a tokenizer with the same n_levels, codebook_size and dimension."
        )
    return arr


def codebooks_fingerprint(codebooks: np.ndarray | None) -> str | None:
    """Short content hash of codebooks, so get_params() stays JSON-able for manifests."""
    if codebooks is None:
        return None
    arr = np.ascontiguousarray(np.asarray(codebooks, dtype=np.float32))
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()[:16]
    return f"sha256:{digest}"


def require_fitted(estimator: object) -> None:
    """Raise FreshsidError when ``estimator`` has no ``codebooks_`` yet."""
    if not hasattr(estimator, "codebooks_"):
        name = type(estimator).__name__
        raise FreshsidError(f"This {name} is not fitted yet; call fit(X) before using it.")


def check_codes(codes: object, codebooks: np.ndarray) -> np.ndarray:
    """Validate codes (n, L) against codebooks (L, K, d); returns int64 codes."""
    arr = np.asarray(codes)
    n_levels, k = codebooks.shape[:2]
    if arr.ndim != 2 or arr.shape[1] != n_levels or not np.issubdtype(arr.dtype, np.integer):
        raise FreshsidError(
            f"codes have shape {arr.shape} and dtype {arr.dtype}; pass integer codes of shape (n, {n_levels})."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= k):
        raise FreshsidError(f"codes must lie in [0, {k}); pass codes produced by this tokenizer.")
    return arr.astype(np.int64)


def squared_distances(X, codebook):
    """Squared L2 distances between rows and codewords.

    X: (m, d), codebook: (K, d) -> (m, K), as ||x||^2 - 2 x.c + ||c||^2 so one
    GEMM does the work. Written with operators that numpy arrays and torch
    tensors share, so the RQ-VAE training step uses this same formula on its
    torch batch (a numpy round trip per batch thrashes BLAS threads against
    torch's).
    """
    return (X * X).sum(1)[:, None] - 2.0 * (X @ codebook.T) + (codebook * codebook).sum(1)[None, :]


def nearest(X: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest codeword per row, in blocks of CHUNK_ROWS rows.

    X: (n, d), codebook: (K, d) -> codes (n,) int32, squared distances (n,) float32.
    Ties go to the lowest code index.
    """
    n = X.shape[0]
    codes = np.empty(n, dtype=np.int32)
    dist = np.empty(n, dtype=np.float32)
    c2 = (codebook * codebook).sum(1)
    for start in range(0, n, CHUNK_ROWS):
        block = X[start : start + CHUNK_ROWS]
        # ||x||^2 is the same for every code of a row, so the argmin only needs
        # ||c||^2 - 2 x.c; computed in place, this saves two passes over the block.
        scores = block @ codebook.T
        scores *= -2.0
        scores += c2
        idx = scores.argmin(axis=1)
        codes[start : start + block.shape[0]] = idx
        dist[start : start + block.shape[0]] = (block * block).sum(1) + scores[np.arange(idx.size), idx]
    return codes, np.maximum(dist, 0.0)


def balanced_assign(
    X: np.ndarray, codebook: np.ndarray, *, capacity: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Size-balanced assignment: every code receives at most ``capacity`` rows.

    X: (n, d), codebook: (K, d) -> codes (n,) int32, squared distances (n,) float32.
    ``capacity`` defaults to ceil(n / K).

    Method: the capacity-constrained greedy matching by distance -- walk all
    (row, code) pairs from nearest to farthest and take a pair when the row is
    still free and the code still has room. With one shared ranking of pairs
    (distance, then row index) that greedy result is the unique stable
    matching, so we compute it by vectorised deferred acceptance instead of a
    Python loop over n*K pairs: every free row proposes to its nearest code
    that could still accept it, each code keeps its ``capacity`` best rows
    among holders and proposers, and the displaced rows propose again. A full
    code's threshold (its worst kept row) only improves, so rows never revisit
    a code that rejected them and the loop ends.
    """
    n, k = X.shape[0], codebook.shape[0]
    cap = math.ceil(n / k) if capacity is None else int(capacity)
    if cap * k < n:
        raise ValueError(f"capacity {cap} x {k} codes cannot hold {n} rows")
    codes = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, np.inf, dtype=np.float32)
    # (distance, row) of the worst row a full code keeps; (inf, n) while it has room.
    thr_d = np.full(k, np.inf, dtype=np.float32)
    thr_i = np.full(k, n, dtype=np.int64)
    free = np.arange(n)
    while free.size:
        choice = np.empty(free.size, dtype=np.int64)
        choice_d = np.empty(free.size, dtype=np.float32)
        for start in range(0, free.size, CHUNK_ROWS):
            rows = free[start : start + CHUNK_ROWS]
            block = squared_distances(X[rows], codebook)
            ok = (block < thr_d) | ((block == thr_d) & (rows[:, None] < thr_i))
            block = np.where(ok, block, np.inf)
            idx = block.argmin(axis=1)
            choice[start : start + rows.size] = idx
            choice_d[start : start + rows.size] = block[np.arange(idx.size), idx]
        codes[free], dist[free] = choice, choice_d
        # Re-rank every row held by a code that got a proposal; keep the best `cap`.
        touched = np.zeros(k, dtype=bool)
        touched[choice] = True
        pool = np.flatnonzero((codes >= 0) & touched[np.maximum(codes, 0)])
        order = pool[np.lexsort((pool, dist[pool], codes[pool]))]
        group = codes[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
        rejected = order[rank >= cap]
        codes[rejected], dist[rejected] = -1, np.inf
        worst = order[rank == cap - 1]  # only codes that are now full have one
        thr_d[codes[worst]], thr_i[codes[worst]] = dist[worst], worst
        free = np.sort(rejected)
    return codes.astype(np.int32), np.maximum(dist, 0.0)


def assign(X: np.ndarray, codebook: np.ndarray, *, balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest (or size-balanced) codeword per row: (n, d), (K, d) -> (n,) int32, (n,) float32."""
    return balanced_assign(X, codebook) if balanced else nearest(X, codebook)


def residual_encode(X: np.ndarray, codebooks: np.ndarray, *, balanced: bool = False) -> np.ndarray:
    """Residual codes: level l quantizes what levels < l left over.

    X: (n, d) float32, codebooks: (L, K, d) float32 -> codes (n, L) int32.
    """
    residual = X.copy()
    codes = np.empty((X.shape[0], codebooks.shape[0]), dtype=np.int32)
    for level, codebook in enumerate(codebooks):
        codes[:, level], _ = assign(residual, codebook, balanced=balanced)
        residual -= codebook[codes[:, level]]
    return codes


def reconstruct(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Sum of the chosen codewords: codes (n, L), codebooks (L, K, d) -> (n, d) float32."""
    out = np.zeros((codes.shape[0], codebooks.shape[2]), dtype=np.float32)
    for level, codebook in enumerate(codebooks):
        out += codebook[codes[:, level]]
    return out


def kmeans(
    X: np.ndarray, k: int, *, n_iter: int, seed: int, init: np.ndarray | None = None
) -> tuple[np.ndarray, list[float]]:
    """Seeded faiss k-means: X (n, d) float32 -> centroids (k, d) float32, objective per iteration.

    The objective is the mean squared distance per training row. faiss trains
    on a seeded sample of at most 256 rows per centroid (its default), which
    keeps 1M-row fits fast; results are identical for a given seed whatever
    the thread count (checked: faiss splits centroid sums by centroid, not by
    row, so the summation order never changes). Empty clusters are re-seeded
    by faiss itself (it splits a large cluster). ``init`` (k, d) warm-starts;
    with ``n_iter=0`` it is returned unchanged.
    """
    if init is not None and n_iter == 0:
        return np.ascontiguousarray(init, dtype=np.float32).copy(), []
    # min_points_per_centroid=1 silences faiss's "too few points" warning on small
    # catalogs; callers already require n >= k.
    km = faiss.Kmeans(X.shape[1], k, niter=n_iter, seed=int(seed), min_points_per_centroid=1, verbose=False)
    km.train(X, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    n_train = min(X.shape[0], k * km.cp.max_points_per_centroid)
    return np.ascontiguousarray(km.centroids, dtype=np.float32), [float(v) / n_train for v in km.obj]


def code_means(X: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean row per code: X (n, d), codes (n,) -> means (k, d) float32 (0 for unused), counts (k,) int64."""
    counts = np.bincount(codes, minlength=k)
    order = np.argsort(codes, kind="stable")
    used = np.flatnonzero(counts)
    sums = np.add.reduceat(X[order], np.r_[0, np.cumsum(counts[used])[:-1]], axis=0, dtype=np.float64)
    means = np.zeros((k, X.shape[1]), dtype=np.float32)
    means[used] = sums / counts[used, None]
    return means, counts


def dead_code_replacements(
    counts: np.ndarray, n_candidates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick which codes are dead (count 0) and which candidate row revives each.

    counts: (K,) usage per code -> dead code indices (m,), candidate row indices (m,)
    drawn without replacement when there are enough candidates. The caller
    copies the candidate residuals into its own (numpy or torch) codebook.
    """
    dead = np.flatnonzero(np.asarray(counts) == 0)
    if dead.size == 0 or n_candidates == 0:
        return dead[:0], dead[:0]
    rows = rng.choice(n_candidates, size=dead.size, replace=dead.size > n_candidates)
    return dead, rows
