"""Build a SidTable from item embeddings: fit a tokenizer, code, add the suffix level."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from freshsid.config import RQVAE_EPOCHS, SidConfig
from freshsid.sid.collisions import add_suffix, collision_stats
from freshsid.sid.rqkmeans import RQKMeans
from freshsid.sid.rqvae import RQVAE
from freshsid.sid.table import SidTable


def make_tokenizer(config: SidConfig, *, init_state: dict[str, np.ndarray] | None = None) -> RQKMeans | RQVAE:
    """The unfitted estimator a config describes; ``init_state`` (a fitted tokenizer's
    ``state()``) warm-starts it for ``config.warm_epochs``."""
    warm = init_state is not None
    if config.tokenizer == "rqkmeans":
        extra: dict[str, Any] = dict(n_iter=config.warm_epochs, init_codebooks=init_state["codebooks"]) if warm else {}
        return RQKMeans(n_levels=config.n_levels, codebook_size=config.codebook_size, balanced=config.balanced,
                        seed=config.seed, **extra)
    return RQVAE(n_levels=config.n_levels, codebook_size=config.codebook_size,
                 epochs=config.warm_epochs if warm else (config.epochs or RQVAE_EPOCHS), seed=config.seed, init_state=init_state)


def build_table(
    vectors: np.ndarray,
    items: np.ndarray,
    item_ids: np.ndarray,
    config: SidConfig,
    *,
    window: str,
    inputs: dict[str, str] | None = None,
    init_state: dict[str, np.ndarray] | None = None,
) -> tuple[SidTable, RQKMeans | RQVAE]:
    """Fit a tokenizer on ``vectors`` and code every item.

    Args:
        vectors: (n, d) embeddings of the items to code.
        items: (n,) their dense item indices (any order); item_ids: (n,) original ids.
        window: the part range the embeddings were learned on, for the manifest.
        init_state: a previous table's ``tokenizer_state`` to continue from (warm refresh).

    Returns the table (rows sorted by item, carrying the tokenizer's state) and the fitted tokenizer.
    """
    order = np.argsort(items, kind="stable")
    vectors, items, item_ids = np.asarray(vectors)[order], np.asarray(items)[order], np.asarray(item_ids)[order]
    start = time.perf_counter()
    tokenizer = make_tokenizer(config, init_state=init_state).fit(vectors)
    prefix = tokenizer.transform(vectors)
    codes = add_suffix(prefix, suffix_size=config.suffix_size)
    seconds = time.perf_counter() - start
    sizes = (config.codebook_size,) * config.n_levels + (config.suffix_size,)
    stats = collision_stats(prefix, sizes[:-1])
    meta: dict[str, Any] = {
        "tokenizer": {"kind": config.tokenizer, **tokenizer.get_params()},
        "seed": config.seed,
        "inputs": inputs or {},
        "compute": {"tokenizer_seconds": seconds, "tokenizer_flops": tokenizer_flops(tokenizer, vectors.shape)},
        "window": window,
        "stats": stats,
    }
    table = SidTable(items=items, codes=codes, codebook_sizes=sizes, item_ids=item_ids, meta=meta,
                     tokenizer_state=tokenizer.state())
    return table, tokenizer


def tokenizer_flops(tokenizer: RQKMeans | RQVAE, shape: tuple[int, int]) -> float:
    """Analytic estimate of the fit's floating-point operations.

    Residual k-means: each iteration of each level computes n x K distances of d
    dimensions (2 flops per multiply-add). RQ-VAE: per epoch, the MLP forward +
    backward (3x forward, 2 flops per weight per row) plus the quantizer distances.
    """
    n, d = shape
    k, levels = tokenizer.codebook_size, tokenizer.n_levels
    if isinstance(tokenizer, RQKMeans):
        return float(2.0 * n * k * d * levels * max(1, tokenizer.n_iter))
    dims = [d, *tokenizer.hidden_dims, tokenizer.latent_dim]
    mlp = sum(a * b for a, b in zip(dims[:-1], dims[1:])) * 2  # encoder + mirrored decoder
    per_row = 3 * 2 * mlp + 3 * 2 * k * tokenizer.latent_dim * levels
    return float(per_row * n * tokenizer.epochs)
