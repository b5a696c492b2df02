"""Residual-quantization tokenizers: shared core, RQ-KMeans and RQ-VAE estimators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.errors import FreshsidError
from freshsid.sid import quantize
from freshsid.sid.quantize import (
    balanced_assign,
    code_means,
    dead_code_replacements,
    kmeans,
    nearest,
    reconstruct,
    residual_encode,
    squared_distances,
)
from freshsid.sid.rqkmeans import RQKMeans
from freshsid.sid.rqvae import RQVAE

torch.set_num_threads(1)  # the test machine has 2 shared cores


def clustered(n: int = 600, d: int = 8, n_centers: int = 12, seed: int = 0) -> np.ndarray:
    """Gaussian blobs: well-separated centers plus unit-scale noise, (n, d) float32."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(n_centers, d))
    return (centers[rng.integers(0, n_centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


def same_code_vs_random_distance(X: np.ndarray, first_level: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Mean distance of pairs sharing a level-1 code and of random pairs."""
    rng = np.random.default_rng(seed)
    d = np.sqrt(np.maximum(squared_distances(X, X), 0))
    same = first_level[:, None] == first_level[None, :]
    off_diagonal = ~np.eye(len(X), dtype=bool)
    i, j = rng.integers(0, len(X), (2, 5000))
    return float(d[same & off_diagonal].mean()), float(d[i[i != j], j[i != j]].mean())


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return clustered()


def small_vae(**changes: object) -> RQVAE:
    """A tiny RQ-VAE that trains in about a second on 600 x 8 rows."""
    settings = {"n_levels": 2, "codebook_size": 16, "latent_dim": 4, "hidden_dims": (16,), "epochs": 20,
                "batch_size": 64, "lr": 3e-3}
    return RQVAE(**{**settings, **changes})


@pytest.fixture(scope="module")
def fitted_vae(X: np.ndarray) -> RQVAE:
    return small_vae().fit(X)


# --- shared core -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 6), d=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_nearest_matches_brute_force_across_chunks(n: int, k: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    C = rng.normal(size=(k, d)).astype(np.float32)
    brute = ((X[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1)
    old = quantize.CHUNK_ROWS
    quantize.CHUNK_ROWS = 7  # force several blocks
    try:
        codes, dist = nearest(X, C)
    finally:
        quantize.CHUNK_ROWS = old
    assert codes.dtype == np.int32
    np.testing.assert_allclose(dist, brute.min(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(brute[np.arange(n), codes], brute.min(1), rtol=1e-4, atol=1e-4)


def greedy_by_distance(X: np.ndarray, C: np.ndarray, cap: int) -> np.ndarray:
    """Reference: walk (row, code) pairs nearest first; take a pair if row free and code has room."""
    D = squared_distances(X, C)
    n, k = D.shape
    codes, load = np.full(n, -1), np.zeros(k, dtype=int)
    for flat in np.lexsort((np.repeat(np.arange(n), k), D.ravel())):
        i, j = divmod(int(flat), k)
        if codes[i] < 0 and load[j] < cap:
            codes[i], load[j] = j, load[j] + 1
    return codes


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 50), k=st.integers(1, 8), seed=st.integers(0, 10**6), skew=st.booleans())
def test_balanced_assign_respects_capacity_and_equals_greedy(n: int, k: int, seed: int, skew: bool) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    if skew:  # everyone nearest to code 0: capacity must push rows away
        X = X * 0.1
    C = rng.normal(size=(k, 3)).astype(np.float32)
    codes, dist = balanced_assign(X, C)
    cap = math.ceil(n / k)
    assert codes.min() >= 0 and np.bincount(codes, minlength=k).max() <= cap
    np.testing.assert_array_equal(codes, greedy_by_distance(X, C, cap))
    np.testing.assert_allclose(dist, squared_distances(X, C)[np.arange(n), codes].clip(0), rtol=1e-5, atol=1e-5)


def test_residual_encode_reconstruct_and_means(X: np.ndarray) -> None:
    C = np.stack([X[:8], X[8:16] - X[:8]]).astype(np.float32)  # (2, 8, d)
    codes = residual_encode(X, C)
    assert codes.shape == (len(X), 2) and codes.dtype == np.int32
    level1, _ = nearest(X, C[0])
    np.testing.assert_array_equal(codes[:, 0], level1)
    approx = reconstruct(codes, C)
    np.testing.assert_allclose(approx, C[0][codes[:, 0]] + C[1][codes[:, 1]], rtol=1e-6)
    means, counts = code_means(X, codes[:, 0], 9)
    assert counts.sum() == len(X) and counts[8] == 0 and not means[8].any()
    np.testing.assert_allclose(means[codes[0, 0]], X[codes[:, 0] == codes[0, 0]].mean(0), rtol=1e-5)


def test_dead_code_replacements() -> None:
    rng = np.random.default_rng(0)
    dead, rows = dead_code_replacements(np.array([3, 0, 1, 0]), 10, rng)
    np.testing.assert_array_equal(dead, [1, 3])
    assert rows.shape == (2,) and rows[0] != rows[1] and (rows < 10).all()
    dead, rows = dead_code_replacements(np.array([1, 2]), 10, rng)
    assert dead.size == rows.size == 0


def test_kmeans_is_seeded_and_warm_startable(X: np.ndarray) -> None:
    a, obj_a = kmeans(X, 8, n_iter=5, seed=3)
    b, obj_b = kmeans(X, 8, n_iter=5, seed=3)
    assert a.tobytes() == b.tobytes() and obj_a == obj_b
    assert obj_a[-1] <= obj_a[0]
    same, no_obj = kmeans(X, 8, n_iter=0, seed=3, init=a)
    np.testing.assert_array_equal(same, a)
    assert no_obj == []


# --- RQ-KMeans ------------------------------------------------------------------


def test_rqkmeans_contract(X: np.ndarray) -> None:
    model = RQKMeans(n_levels=3, codebook_size=8, n_iter=10)
    with pytest.raises(FreshsidError, match="not fitted"):
        model.transform(X)
    assert model.fit(X) is model
    assert model.codebooks_.shape == (3, 8, X.shape[1]) and model.codebooks_.dtype == np.float32
    assert len(model.inertia_history_) == 3 and all(len(h) > 0 for h in model.inertia_history_)
    assert model.fit_seconds_ > 0 and model.n_features_in_ == X.shape[1]
    codes = model.transform(X.astype(np.float64))  # coerced at the boundary
    assert codes.shape == (len(X), 3) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 8
    np.testing.assert_array_equal(model.fit_transform(X), codes)
    params = json.loads(json.dumps(model.get_params()))
    assert params["codebook_size"] == 8 and params["init_codebooks"] is None
    # Each level removes error: the residual after l levels shrinks.
    errors = [((reconstruct(codes[:, :level], model.codebooks_[:level]) - X) ** 2).sum(1).mean() for level in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(10), "2-D"),
        (np.full((50, 4), np.nan), "NaN"),
        (np.zeros((5, 4)), "at least 8"),
        ([["a", "b"]] * 20, "dtype"),
    ],
)
def test_rqkmeans_rejects_bad_input(bad: object, match: str) -> None:
    with pytest.raises(FreshsidError, match=match):
        RQKMeans(codebook_size=8).fit(bad)


def test_rqkmeans_rejects_bad_settings(X: np.ndarray) -> None:
    with pytest.raises(FreshsidError, match="n_levels"):
        RQKMeans(n_levels=0).fit(X)
    with pytest.raises(FreshsidError, match="init_codebooks"):
        RQKMeans(n_levels=2, codebook_size=8, init_codebooks=np.zeros((2, 8, 3))).fit(X)
    model = RQKMeans(n_levels=1, codebook_size=8).fit(X)
    with pytest.raises(FreshsidError, match="columns"):
        model.transform(X[:, :3])
    with pytest.raises(FreshsidError, match="codes"):
        model.inverse_transform(np.array([[9]]))


def test_rqkmeans_seeding(X: np.ndarray) -> None:
    first = RQKMeans(n_levels=2, codebook_size=8, seed=5).fit(X)
    again = RQKMeans(n_levels=2, codebook_size=8, seed=5).fit(X)
    assert first.codebooks_.tobytes() == again.codebooks_.tobytes()
    assert first.transform(X).tobytes() == again.transform(X).tobytes()
    other = RQKMeans(n_levels=2, codebook_size=8, seed=6).fit(X)
    codes = other.transform(X)
    assert codes.shape == (len(X), 2) and 0 <= codes.min() and codes.max() < 8
    assert other.codebooks_.tobytes() != first.codebooks_.tobytes()


def test_rqkmeans_warm_start(X: np.ndarray) -> None:
    legacy = RQKMeans(n_levels=2, codebook_size=8, seed=1).fit(X)
    frozen = RQKMeans(n_levels=2, codebook_size=8, n_iter=0, init_codebooks=legacy.codebooks_).fit(X)
    np.testing.assert_array_equal(frozen.codebooks_, legacy.codebooks_)
    np.testing.assert_array_equal(frozen.transform(X), legacy.transform(X))
    assert frozen.get_params()["init_codebooks"].startswith("sha256:")
    # A refresh from the legacy codebooks starts near its optimum, a cold start does not.
    drifted = X + np.float32(0.3)
    warm = RQKMeans(n_levels=2, codebook_size=8, n_iter=3, init_codebooks=legacy.codebooks_).fit(drifted)
    cold = RQKMeans(n_levels=2, codebook_size=8, n_iter=3, seed=1).fit(drifted)
    assert warm.inertia_history_[0][0] < cold.inertia_history_[0][0]
    assert np.mean(warm.transform(drifted)[:, 0] == legacy.transform(X)[:, 0]) > 0.9


def test_rqkmeans_balanced_respects_capacity() -> None:
    # Very unequal blobs: plain k-means gives big and small clusters.
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(500, 4)), rng.normal(loc=20, size=(50, 4))]).astype(np.float32)
    k, cap = 8, math.ceil(550 / 8)
    plain = RQKMeans(n_levels=2, codebook_size=k).fit(X).transform(X)
    balanced_model = RQKMeans(n_levels=2, codebook_size=k, balanced=True).fit(X)
    codes = balanced_model.transform(X)
    assert np.bincount(plain[:, 0], minlength=k).max() > cap  # the constraint is doing work
    for level in range(2):
        assert np.bincount(codes[:, level], minlength=k).max() <= cap
    assert balanced_model.get_params()["balanced"] is True


def test_rqkmeans_level1_codes_group_nearby_items(X: np.ndarray) -> None:
    codes = RQKMeans(n_levels=2, codebook_size=16, seed=0).fit(X).transform(X)
    same, random = same_code_vs_random_distance(X, codes[:, 0])
    assert same < 0.5 * random


# --- RQ-VAE ------------------------------------------------------------------------


def test_rqvae_contract(X: np.ndarray, fitted_vae: RQVAE) -> None:
    with pytest.raises(FreshsidError, match="not fitted"):
        RQVAE().transform(X)
    model = fitted_vae
    assert model.codebooks_.shape == (2, 16, 4) and model.codebooks_.dtype == np.float32
    assert isinstance(model.codebooks_, np.ndarray)
    assert len(model.loss_history_) == 20 and model.fit_seconds_ > 0
    codes = model.transform(X)
    assert codes.shape == (len(X), 2) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 16
    np.testing.assert_array_equal(model.transform(X), codes)  # no hidden state changes
    assert model.inverse_transform(codes).shape == X.shape
    params = json.loads(json.dumps(model.get_params()))
    assert params["hidden_dims"] == [16] and params["beta"] == 0.25
    with pytest.raises(FreshsidError, match="at least 8"):
        RQVAE(codebook_size=8).fit(X[:5])
    with pytest.raises(FreshsidError, match="device"):
        RQVAE(device="not-a-device").fit(X)
    with pytest.raises(FreshsidError, match="lr"):
        RQVAE(lr=float("nan")).fit(X)


def test_rqvae_same_seed_identical_codes(X: np.ndarray, fitted_vae: RQVAE) -> None:
    again = small_vae().fit(X)
    assert again.transform(X).tobytes() == fitted_vae.transform(X).tobytes()
    assert again.codebooks_.tobytes() == fitted_vae.codebooks_.tobytes()
    other = small_vae(epochs=2, seed=9).fit(X)
    codes = other.transform(X)
    assert codes.min() >= 0 and codes.max() < 16
    assert other.codebooks_.tobytes() != fitted_vae.codebooks_.tobytes()


def test_rqvae_reconstruction_improves(X: np.ndarray, fitted_vae: RQVAE) -> None:
    history = [h["recon"] for h in fitted_vae.loss_history_]
    assert history[-1] < 0.5 * history[0]
    untrained = small_vae(epochs=0).fit(X)

    def error(model: RQVAE) -> float:
        return float(((model.inverse_transform(model.transform(X)) - X) ** 2).mean())

    assert error(fitted_vae) < 0.5 * error(untrained)


def test_rqvae_warm_start_continues_from_a_fitted_state(X: np.ndarray, fitted_vae: RQVAE) -> None:
    state = fitted_vae.state()
    frozen = small_vae(epochs=0, init_state=state).fit(X)  # epochs=0: the old tokenizer as it was
    np.testing.assert_array_equal(frozen.codebooks_, fitted_vae.codebooks_)
    np.testing.assert_array_equal(frozen.transform(X), fitted_vae.transform(X))
    assert frozen.get_params()["init_state"].startswith("sha256:")
    # Continuing on drifted rows keeps far more codes than a fresh fit with another seed.
    drifted = X + np.random.default_rng(0).normal(scale=0.05, size=X.shape).astype(np.float32)
    warm = small_vae(epochs=3, init_state=state).fit(drifted).transform(drifted)
    cold = small_vae(seed=9).fit(drifted).transform(drifted)
    old = fitted_vae.transform(X)
    assert (warm[:, 0] == old[:, 0]).mean() > 0.8 > (cold[:, 0] == old[:, 0]).mean()
    with pytest.raises(FreshsidError, match="init_codebooks"):
        small_vae(latent_dim=5, init_state=state).fit(X)
    with pytest.raises(FreshsidError, match="encoder does not fit"):
        small_vae(hidden_dims=(8,), init_state=state).fit(X)


def test_rqvae_level1_codes_group_nearby_items(X: np.ndarray, fitted_vae: RQVAE) -> None:
    same, random = same_code_vs_random_distance(X, fitted_vae.transform(X)[:, 0])
    assert same < 0.5 * random
