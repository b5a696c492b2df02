"""The embeddings artifact: ``embeddings.npy`` + ``items.npy`` + ``manifest.json``
(+ ``model.safetensors``, the weights of the model that made them, when it has any).

``embeddings.npy`` is (n_items, dim) float32 with row i for dense item i of the logs
it was made from; ``items.npy`` lists, sorted, the items whose rows mean something
(items seen in training for collaborative embeddings, every item for content ones).
A tokenizer fits on ``vectors[items]``; a refresh can continue training from the weights. The manifest's ``info`` carries the shape,
the embedding kind and the training window, and loading checks the files against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import load_file, save_file

from freshsid.artifacts import Manifest, artifact_dir, finish_manifest, read_manifest, reading
from freshsid.errors import FreshsidError

KIND = "embeddings"
VECTORS = "embeddings.npy"
ITEMS = "items.npy"
STATE = "model.safetensors"


def save_embeddings(
    out_dir: Path | str,
    vectors: np.ndarray,
    *,
    kind: Literal["collab", "content"],
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, str],
    compute: dict[str, float],
    window: str,
    items: np.ndarray | None = None,
    state: dict[str, np.ndarray] | None = None,
) -> Manifest:
    """Write an embeddings artifact atomically and return its manifest.

    Args:
        vectors: (n_items, dim) item embeddings, row i = dense item i.
        kind: "collab" or "content".
        config: the producing model's config (recorded, not interpreted).
        inputs: name -> fingerprint of what the vectors were made from (e.g. the logs).
        compute: e.g. ``{"seconds": ..., "flops": ...}``.
        window: the part range the vectors were trained on, e.g. "0:8" ("" for content).
        items: (n_covered,) item indices whose rows are meaningful; default all.
        state: the producing model's weights (name -> array), for warm starts.
    """
    if kind not in ("collab", "content"):
        raise ValueError(f"unknown embedding kind {kind!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise ValueError(f"vectors must be a finite 2-D array, got shape {vectors.shape}")
    n_items, dim = vectors.shape
    items = np.arange(n_items, dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64)
    _check_items(items, n_items, where="items")
    with artifact_dir(Path(out_dir)) as tmp:
        np.save(tmp / VECTORS, vectors)
        np.save(tmp / ITEMS, items)
        if state is not None:
            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp / STATE))
        info = {"embedding": kind, "window": window, "n_items": n_items, "dim": dim, "n_covered": len(items)}
        return finish_manifest(tmp, kind=KIND, config=config, seed=seed, inputs=inputs, compute=compute, info=info)


def load_embeddings(folder: Path | str) -> tuple[np.ndarray, Manifest]:
    """(n_items, dim) float32 vectors and the manifest; the files are checked against it."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND, require=(VECTORS, ITEMS))
    with reading(folder / VECTORS):
        vectors = np.load(folder / VECTORS, allow_pickle=False)
    expected = (manifest.info.get("n_items"), manifest.info.get("dim"))
    if vectors.dtype != np.float32 or vectors.shape != expected:
        raise FreshsidError(
            f"{folder / VECTORS} is {vectors.dtype} {vectors.shape}, its manifest says float32 {expected}; rebuild {folder}."
        )
    return vectors, manifest


def load_model_state(folder: Path | str) -> dict[str, np.ndarray]:
    """The weights of the model that made the embeddings (checked against the manifest)."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND)
    if STATE not in manifest.files:
        raise FreshsidError(f"{folder} holds no model weights to warm-start from; rebuild it with this version of freshsid.")
    with reading(folder / STATE):
        return load_file(str(folder / STATE))


def load_embedding_items(folder: Path | str) -> np.ndarray:
    """(n_covered,) sorted item indices whose rows of ``embeddings.npy`` are meaningful."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND, require=(ITEMS,))
    with reading(folder / ITEMS):
        items = np.load(folder / ITEMS, allow_pickle=False)
    if len(items) != manifest.info.get("n_covered"):
        said = manifest.info.get("n_covered")
        raise FreshsidError(f"{folder / ITEMS} lists {len(items)} items, its manifest says {said}; rebuild {folder}.")
    _check_items(items, manifest.info["n_items"], where=str(folder / ITEMS))
    return items


def _check_items(items: np.ndarray, n_items: int, *, where: str) -> None:
    ordered = items.ndim == 1 and items.dtype.kind in "iu" and bool((np.diff(items) > 0).all())
    if not ordered or (items.size and (items[0] < 0 or items[-1] >= n_items)):
        raise FreshsidError(f"{where} must be sorted, distinct item indices in [0, {n_items}); rebuild the embeddings.")


@dataclass(frozen=True)
class Embeddings:
    """Item vectors in memory, with what their artifact's manifest records.

    Attributes:
        vectors: (n_items, dim) float32, row i = dense item i of the logs.
        items: (n_covered,) sorted items whose rows mean something.
        kind: "collab" or "content"; config, seed, compute, window: as in the manifest.
        state: the producing model's weights, if it has any (saved beside the vectors).
    """

    vectors: np.ndarray
    items: np.ndarray
    kind: str
    config: dict[str, Any]
    seed: int | None
    compute: dict[str, float]
    window: str
    state: dict[str, np.ndarray] | None = None

    def save(self, out: Path | str, logs_fingerprint: str) -> Manifest:
        return save_embeddings(out, self.vectors, kind=self.kind, config=self.config, seed=self.seed,  # type: ignore[arg-type]
                               inputs={"logs": logs_fingerprint}, compute=self.compute, window=self.window,
                               items=self.items, state=self.state)

    @classmethod
    def load(cls, folder: Path | str) -> Embeddings:
        """An embeddings artifact back in memory, its model's weights too when it has them."""
        vectors, manifest = load_embeddings(folder)
        state = load_model_state(folder) if STATE in manifest.files else None
        return cls(vectors, load_embedding_items(folder), str(manifest.info.get("embedding")), manifest.config,
                   manifest.seed, dict(manifest.compute), str(manifest.info.get("window", "")), state=state)
