"""The estimators of the public API: thin scikit-learn-style wrappers over the pipeline.

:class:`CollabSidBuilder` builds collaborative SIDs (SASRec embeddings quantized into a
:class:`~freshsid.sid.table.SidTable`), :func:`refresh` rebuilds them on later logs and
aligns them to the legacy vocabulary, :class:`GenerativeRetriever` trains, fine-tunes,
evaluates and queries the retriever. Each wraps the functions the CLI and the
experiment runner call (:mod:`freshsid.sid.refresh`, :mod:`freshsid.retriever.pipeline`),
so the three cannot drift apart. Hyper-parameters go to ``__init__``, ``fit`` returns
``self``, what was learnt ends with ``_``, and a method that needs a fitted estimator
raises :class:`~freshsid.errors.FreshsidError` on an unfitted one.

This module imports torch (through the pipeline); ``import freshsid`` does not, it
loads this module the first time one of these names is used.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshsid.artifacts import Manifest, artifact_dir, read_manifest
from freshsid.config import ExperimentConfig, SASRecConfig, SidConfig, TrainConfig, preset
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.metrics import DEFAULT_KS
from freshsid.retriever import pipeline
from freshsid.retriever.model import Retriever, RetrieverConfig, load_checkpoint
from freshsid.retriever.remap import remap_plan
from freshsid.sid import refresh as sid_refresh
from freshsid.sid.align import METHODS, align as align_tables
from freshsid.sid.table import SidTable

__all__ = ["CollabSidBuilder", "GenerativeRetriever", "align", "refresh"]


def _config(config: str | ExperimentConfig) -> ExperimentConfig:
    return preset(config) if isinstance(config, str) else config


def _fitted(estimator: object, attribute: str) -> Any:
    value = getattr(estimator, attribute, None)
    if value is None:
        raise FreshsidError(f"This {type(estimator).__name__} is not fitted yet; call fit() (or load()) first.")
    return value


class CollabSidBuilder:
    """Collaborative Semantic IDs: SASRec item embeddings on a window of the logs, quantized
    into a :class:`~freshsid.sid.table.SidTable` (:func:`freshsid.sid.refresh.build_collab_sids`).

    Args:
        sasrec: the embedding model's config (default: the ``tiny`` preset's).
        sid: the tokenizer's config: levels, codebook size, suffix size.
        recipe: the refresh recipe (:data:`freshsid.config.RECIPES`); it may change the
            legacy build's settings too, and :func:`refresh` follows it.
        random_state: seed of the embedding model and the tokenizer.

    Attributes (after :meth:`fit`):
        table_: the SidTable of the items seen in the window.
        embeddings_: (n_items, dim) item embeddings, with the SASRec weights.
        build_: both, as the :class:`~freshsid.sid.refresh.CollabSids` the pipeline passes on.
        logs_fingerprint_: the logs they were learnt from.

    Examples:
        >>> import freshsid
        >>> logs = freshsid.load_dataset("synthetic")
        >>> split = freshsid.TemporalSplit(logs, n_parts=10)
        >>> builder = freshsid.CollabSidBuilder.from_config("tiny").fit(split, freshsid.Window(start=0, stop=8))
        >>> builder.table_.depth == builder.table_.n_levels + 1  # the semantic levels, then the suffix
        True
    """

    def __init__(self, *, sasrec: SASRecConfig | None = None, sid: SidConfig | None = None, recipe: str = "cold",
                 random_state: int = 0) -> None:
        self.sasrec = sasrec
        self.sid = sid
        self.recipe = recipe
        self.random_state = random_state
        self.build_: sid_refresh.CollabSids | None = None
        self.logs_fingerprint_: str | None = None

    @classmethod
    def from_config(cls, config: str | ExperimentConfig = "tiny") -> CollabSidBuilder:
        """The builder an experiment config (or a preset's name) describes."""
        cfg = _config(config)
        return cls(sasrec=cfg.sasrec, sid=cfg.sid, recipe=cfg.recipe, random_state=cfg.seed)

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments, as a manifest records them."""
        return {"sasrec": self.sasrec, "sid": self.sid, "recipe": self.recipe, "random_state": self.random_state}

    def configs(self) -> tuple[SASRecConfig, SidConfig]:
        """The run's SASRec and tokenizer configs before the recipe applies (defaults: ``tiny``)."""
        tiny = preset("tiny")
        return self.sasrec or tiny.sasrec, self.sid or tiny.sid

    def fit(self, split: TemporalSplit, window: Window, *, progress: bool = False) -> CollabSidBuilder:
        """Train SASRec on the events of ``window`` and code the window's items."""
        how = sid_refresh.recipe(self.recipe)
        sasrec, sid = how.legacy_configs(*self.configs())
        self.build_ = sid_refresh.build_collab_sids(split, window, sasrec=sasrec, sid=sid, seed=self.random_state,
                                                    progress=progress)
        self.logs_fingerprint_ = split.logs.fingerprint
        return self

    @property
    def table_(self) -> SidTable:
        return _fitted(self, "build_").table

    @property
    def embeddings_(self) -> Embeddings:
        return _fitted(self, "build_").embeddings

    def save(self, folder: str | Path) -> Path:
        """Write the embeddings and the table as artifacts under ``folder``."""
        build = _fitted(self, "build_")
        build.save(Path(folder), self.logs_fingerprint_)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, *, recipe: str = "cold") -> CollabSidBuilder:
        """A fitted builder from a folder :meth:`save` wrote (the SASRec weights come with
        the embeddings; the model itself is not rebuilt)."""
        build = sid_refresh.CollabSids.load(Path(folder))
        builder = cls(sid=None, recipe=recipe, random_state=int(build.table.meta.get("seed", 0)))
        builder.build_ = build
        builder.logs_fingerprint_ = read_manifest(Path(folder) / build.EMBEDDINGS).inputs.get("logs")
        return builder


def align(legacy: SidTable, refreshed: SidTable, *, method: str = "hungarian") -> SidTable:
    """``refreshed`` with its codes relabelled, level by level, onto ``legacy``'s vocabulary
    (``method``: ``hungarian`` or ``greedy``); diagnostics in ``meta["stats"]["alignment"]``.

    Examples:
        >>> aligned = freshsid.align(builder.table_, fresh.refreshed.table)
        >>> aligned.codebook_sizes == builder.table_.codebook_sizes
        True
        >>> len(aligned.meta["stats"]["alignment"]["levels"]) == aligned.n_levels
        True
    """
    if method not in METHODS:
        raise FreshsidError(f"Unknown alignment method {method!r}; use one of {', '.join(METHODS)}.")
    return align_tables(legacy, refreshed, method=method)[0]  # type: ignore[arg-type]


def refresh(split: TemporalSplit, window: Window, legacy: CollabSidBuilder, *,
            methods: tuple[str, ...] = METHODS, progress: bool = False) -> sid_refresh.Refresh:
    """Rebuild ``legacy``'s collaborative SIDs on ``window`` as its recipe says and align
    them to its table (:func:`freshsid.sid.refresh.refresh`).

    Returns a :class:`~freshsid.sid.refresh.Refresh`: ``.refreshed.table`` (the new codes)
    and ``.aligned[method]`` (the same items, relabelled onto the legacy vocabulary).

    Examples:
        >>> fresh = freshsid.refresh(split, freshsid.Window(start=0, stop=9), builder)
        >>> sorted(fresh.aligned)
        ['greedy', 'hungarian']
    """
    build = _fitted(legacy, "build_")
    sasrec, sid = legacy.configs()
    return sid_refresh.refresh(split, window, build, recipe=sid_refresh.recipe(legacy.recipe), sasrec=sasrec, sid=sid,
                               seed=legacy.random_state, methods=methods, progress=progress)


class GenerativeRetriever:
    """The generative retriever over Semantic IDs: a decoder that reads a user's history
    as SID tokens and beam-decodes the next item's SID inside a trie of allowed items.

    Args:
        model: size preset of the network (``tiny``, ``cpu`` or ``paper``).
        fit_config: schedule of :meth:`fit` (from scratch); finetune_config: of :meth:`finetune`.
        max_history: items of history the model reads.
        beam: beam width of the decoding (default: ``k`` of each call).
        recipe: the refresh recipe; its ``remap_levels`` says whether :meth:`finetune` onto
            another table first carries the code embeddings over.
        threads: torch intra-op threads while training (default: leave torch's setting).

    Attributes (after :meth:`fit`, :meth:`finetune` or :meth:`load`):
        model_: the torch module; manifest_: its checkpoint's manifest; table_: the SidTable
        it speaks; checkpoint_: the checkpoint folder.

    Examples:
        >>> base, gap, test = (freshsid.Window(start=a, stop=b) for a, b in ((0, 8), (8, 9), (9, 10)))
        >>> retriever = freshsid.GenerativeRetriever.from_config("tiny").fit(split, builder.table_, window=base)
        >>> tuned = retriever.finetune(split, fresh.aligned["hungarian"], window=gap)
        >>> sorted(tuned.evaluate(split, test=test, allowed=base, ks=(10,)))
        ['ndcg@10', 'recall@10']
        >>> items, scores = tuned.recommend(split.examples(test).inputs[:2], split.examples(test).users[:2], k=5)
        >>> items.shape
        (2, 5)
    """

    def __init__(self, *, model: str = "tiny", fit_config: TrainConfig | None = None,
                 finetune_config: TrainConfig | None = None, max_history: int = 20, beam: int | None = None,
                 recipe: str = "cold", threads: int | None = None) -> None:
        self.model = model
        self.fit_config = fit_config
        self.finetune_config = finetune_config
        self.max_history = max_history
        self.beam = beam
        self.recipe = recipe
        self.threads = threads
        self.model_: Retriever | None = None
        self.manifest_: Manifest | None = None
        self.table_: SidTable | None = None
        self.checkpoint_: Path | None = None

    @classmethod
    def from_config(cls, config: str | ExperimentConfig = "tiny") -> GenerativeRetriever:
        """The retriever an experiment config (or a preset's name) describes."""
        cfg = _config(config)
        return cls(model=cfg.retriever, fit_config=cfg.fit, finetune_config=cfg.finetune,
                   max_history=cfg.protocol.max_history, beam=cfg.beam, recipe=cfg.recipe, threads=cfg.threads)

    def get_params(self) -> dict[str, Any]:
        return {"model": self.model, "fit_config": self.fit_config, "finetune_config": self.finetune_config,
                "max_history": self.max_history, "beam": self.beam, "recipe": self.recipe,
                "threads": self.threads}

    def _out(self, out: str | Path | None) -> Path:
        if self.threads is not None:  # (as the experiment runner does before each training)
            torch.set_num_threads(self.threads)
        return Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="freshsid-")) / "checkpoint"

    def _learnt(self, result: Any, table: SidTable, out: Path) -> None:
        self.model_, self.manifest_, self.table_, self.checkpoint_ = result.model, result.manifest, table, out

    def fit(self, split: TemporalSplit, table: SidTable, *, window: Window, out: str | Path | None = None,
            progress: bool = False) -> GenerativeRetriever:
        """Train from scratch on the events of ``window``; the checkpoint goes to ``out``
        (default: a temporary folder; keep it with :meth:`save`)."""
        folder = self._out(out)
        config = RetrieverConfig.preset(self.model, codebook_sizes=table.codebook_sizes, max_history=self.max_history)
        result = pipeline.fit(split, table, window=window, model_config=config,
                              train_config=self.fit_config or preset("tiny").fit, out=folder, show_progress=progress)
        self._learnt(result, table, folder)
        return self

    def finetune(self, split: TemporalSplit, table: SidTable, *, window: Window, out: str | Path | None = None,
                 seed: int = 0, progress: bool = False) -> GenerativeRetriever:
        """A new retriever warm-started from this one, trained with the loss on ``window``'s
        events only, over ``table`` (the same shape; e.g. an aligned refresh). This one is
        left as it was, so the two can be compared. ``seed`` is added to the schedule's seed."""
        checkpoint, spoken = _fitted(self, "checkpoint_"), _fitted(self, "table_")
        base = self.finetune_config or preset("tiny").finetune
        train_config = base.model_copy(update={"seed": base.seed + seed})
        how = sid_refresh.recipe(self.recipe)
        remap = remap_plan(spoken, table, how.remap_levels, **how.finetune_start())
        folder = self._out(out)
        result = pipeline.finetune(checkpoint, split, table, target=window, train_config=train_config, out=folder,
                                   show_progress=progress, remap=remap)
        tuned = GenerativeRetriever(**self.get_params())
        tuned._learnt(result, table, folder)
        return tuned

    def recommend(self, histories: np.ndarray, users: np.ndarray, *, k: int = 10,
                  allowed_items: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` dense item indices (m, k) and their scores, for users (m,) with
        histories (m, T) of dense item indices left-padded with -1."""
        model, table = _fitted(self, "model_"), _fitted(self, "table_")
        return pipeline.recommend(model, table, np.asarray(histories), np.asarray(users), allowed_items=allowed_items,
                                  top_k=k, beam=max(k, self.beam or k))

    def evaluate(self, split: TemporalSplit, *, test: Window, allowed: Window, ks: tuple[int, ...] = DEFAULT_KS,
                 max_users: int | None = None) -> dict[str, float]:
        """Recall@K and nDCG@K on the users of the ``test`` window, decoding over the items
        seen in ``allowed`` (the protocol of :mod:`freshsid.evaluate`)."""
        model, table = _fitted(self, "model_"), _fitted(self, "table_")
        return pipeline.evaluate(model, table, split, test=test, allowed=allowed, ks=ks, beam=self.beam,
                                 max_users=max_users)

    def save(self, folder: str | Path) -> Path:
        """Copy the checkpoint artifact to ``folder`` (atomically)."""
        source = _fitted(self, "checkpoint_")
        with artifact_dir(Path(folder)) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, table: SidTable, *, beam: int | None = None,
             recipe: str = "cold") -> GenerativeRetriever:
        """A fitted retriever from a checkpoint folder and the table it speaks."""
        model, manifest = load_checkpoint(Path(folder), expected_shape=table.codebook_sizes)
        if manifest.info.get("sid_table") not in (None, table.content_hash):
            raise FreshsidError(f"{folder} was trained on another SID table; pass the table it was trained on.")
        retriever = cls(max_history=model.config.max_history, beam=beam, recipe=recipe)
        retriever.model_, retriever.manifest_, retriever.table_, retriever.checkpoint_ = model, manifest, table, Path(folder)
        return retriever

