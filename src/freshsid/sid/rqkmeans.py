"""RQ-KMeans: residual k-means tokenizer (one k-means per level on the residuals).

Level 1 clusters the item embeddings, level 2 clusters what level 1 left over,
and so on; an item's Semantic ID is its tuple of cluster indices. Items that
share a level-1 code are close in embedding space, which is what makes the
prefix meaningful to a generative retriever.

``balanced=True`` makes every code hold at most ceil(n / K) items per level:
after the plain k-means, Lloyd iterations alternate a capacity-constrained
assignment (:func:`freshsid.sid.quantize.balanced_assign`, the greedy
matching by distance) with a mean update, stopping when the assignment no
longer changes. Balanced codes spread the catalog evenly across the
vocabulary and cut collisions; the same balanced assignment is applied in
``transform``, so an item's code then depends on the batch it is encoded with.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from freshsid.errors import FreshsidError
from freshsid.sid.quantize import (
    as_codebooks,
    as_matrix,
    assign,
    balanced_assign,
    check_codes,
    check_int,
    code_means,
    codebooks_fingerprint,
    dead_code_replacements,
    kmeans,
    reconstruct,
    require_fitted,
    residual_encode,
)


class RQKMeans:
    """Residual k-means tokenizer: X (n, d) -> codes (n, n_levels) int32.

    Fitted attributes:
        codebooks_ (L, K, d) float32; inertia_history_ list per level of the
        mean squared residual per row after each iteration (faiss iterations on
        its training sample, then balanced iterations on all rows);
        n_features_in_ int; fit_seconds_ float.
    """

    def __init__(
        self,
        *,
        n_levels: int = 3,
        codebook_size: int = 256,
        n_iter: int = 20,
        balanced: bool = False,
        seed: int = 0,
        init_codebooks: np.ndarray | None = None,
    ) -> None:
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.n_iter = n_iter
        self.balanced = balanced
        self.seed = seed
        self.init_codebooks = init_codebooks

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters as JSON-able values (warm start recorded by content hash)."""
        return {
            "n_levels": self.n_levels,
            "codebook_size": self.codebook_size,
            "n_iter": self.n_iter,
            "balanced": bool(self.balanced),
            "seed": self.seed,
            "init_codebooks": codebooks_fingerprint(self.init_codebooks),
        }

    def fit(self, X: np.ndarray) -> RQKMeans:
        """Learn one codebook per level on the residuals of X (n, d)."""
        n_levels = check_int(self.n_levels, name="n_levels", minimum=1)
        k = check_int(self.codebook_size, name="codebook_size", minimum=2)
        n_iter = check_int(self.n_iter, name="n_iter", minimum=0)
        seed = check_int(self.seed, name="seed", minimum=0)
        X = as_matrix(X, min_rows=k)
        init = None
        if self.init_codebooks is not None:
            init = as_codebooks(self.init_codebooks, n_levels=n_levels, codebook_size=k, dim=X.shape[1])
        start = time.perf_counter()
        # One independent seed per level, all derived from seed.
        level_seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n_levels)
        codebooks = np.empty((n_levels, k, X.shape[1]), dtype=np.float32)
        history: list[list[float]] = []
        residual = X.copy()
        for level in range(n_levels):
            codebook, objective = kmeans(
                residual, k, n_iter=n_iter, seed=int(level_seeds[level]), init=None if init is None else init[level]
            )
            if self.balanced:
                rng = np.random.default_rng(int(level_seeds[level]))
                codebook, more = _balanced_lloyd(residual, codebook, n_iter=n_iter, rng=rng)
                objective += more
            # Exactly the step residual_encode repeats in transform, so fit and
            # transform give byte-identical codes on the same rows.
            codes, _ = assign(residual, codebook, balanced=bool(self.balanced))
            residual -= codebook[codes]
            codebooks[level] = codebook
            history.append(objective)
        self.codebooks_ = codebooks
        self.inertia_history_ = history
        self.n_features_in_ = X.shape[1]
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def state(self) -> dict[str, np.ndarray]:
        """The codebooks, for a later warm start (``init_codebooks=state()["codebooks"]``)."""
        require_fitted(self)
        return {"codebooks": self.codebooks_.copy()}

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Codes of X (n, d) -> (n, L) int32."""
        require_fitted(self)
        X = as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise FreshsidError(
                f"X has {X.shape[1]} columns but the tokenizer was fitted on {self.n_features_in_}; "
                "pass embeddings from the same model."
            )
        return residual_encode(X, self.codebooks_, balanced=bool(self.balanced))

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """fit(X) then transform(X): (n, d) -> (n, L) int32."""
        return self.fit(X).transform(X)

    def inverse_transform(self, codes: np.ndarray) -> np.ndarray:
        """Approximate embeddings from codes (n, L) -> (n, d) float32 (sum of codewords)."""
        require_fitted(self)
        return reconstruct(check_codes(codes, self.codebooks_), self.codebooks_)


def _balanced_lloyd(
    X: np.ndarray, codebook: np.ndarray, *, n_iter: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[float]]:
    """Lloyd iterations with capacity-constrained assignment.

    X: (n, d), codebook: (K, d) -> refined codebook (K, d), mean squared
    distance per iteration. A code left empty (capacity is an upper bound
    only) is moved onto a random row, as in dead-code reset.
    """
    objective: list[float] = []
    previous = None
    for _ in range(n_iter):
        codes, dist = balanced_assign(X, codebook)
        objective.append(float(dist.mean()))
        if previous is not None and np.array_equal(codes, previous):
            break
        codebook, counts = code_means(X, codes, codebook.shape[0])
        dead, rows = dead_code_replacements(counts, X.shape[0], rng)
        codebook[dead] = X[rows]
        previous = codes
    return codebook, objective
