"""The estimators of the public API: thin scikit-learn-style wrappers over the pipeline.

:class:`CollabSidBuilder` builds collaborative SIDs (SASRec embeddings quantized into a
:class:`~freshsid.sid.table.SidTable`) and recodes them on later logs (aligned to its
vocabulary, or incrementally), returning a new builder, so recodes chain;
:func:`align` relabels one table onto another's vocabulary; :func:`code_items` quantizes
any item embeddings (collaborative or content) into a table; :class:`GenerativeRetriever`
trains, fine-tunes, evaluates and queries the retriever. Each wraps the functions the
CLI, the experiment and the production refresh call (:mod:`freshsid.recode`,
:mod:`freshsid.retriever.pipeline`), so they cannot drift apart. Hyper-parameters go to
``__init__``, ``fit`` returns ``self``, what was learnt ends with ``_``, and a method
that needs a fitted estimator raises :class:`~freshsid.errors.FreshsidError` on an
unfitted one.

This module imports torch (through the pipeline); ``import freshsid`` does not, it
loads this module the first time one of these names is used.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from freshsid.artifacts import Manifest, artifact_dir, read_manifest, write_json_atomic
from freshsid.config import RETRIEVER_SIZES, ExperimentConfig, SASRecConfig, SidConfig, TrainConfig, preset
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.metrics import DEFAULT_KS
from freshsid.recipes import recipe as find_recipe
from freshsid import recode
from freshsid.recode import CollabSids, aligned, build_collab_sids, incremental, remap
from freshsid.retriever import pipeline
from freshsid.retriever.model import Retriever, RetrieverConfig, load_checkpoint
from freshsid.retriever.remap import RemapPlan
from freshsid.sid.align import METHODS, align as align_tables
from freshsid.sid.table import SidTable

__all__ = ["CollabSidBuilder", "GenerativeRetriever", "align", "code_items"]
PARAMS_FILE = "builder.json"  # a saved builder's constructor arguments
BUILD = "build"  # where a saved builder keeps the build it continues, when not the served one
RETRIEVER_PARAMS = "retriever.json"  # a saved retriever's constructor arguments


def _config(config: str | ExperimentConfig) -> ExperimentConfig:
    return preset(config) if isinstance(config, str) else config


def _fitted(estimator: object, attribute: str) -> Any:
    value = getattr(estimator, attribute, None)
    if value is None:
        raise FreshsidError(f"This {type(estimator).__name__} is not fitted yet; call fit() (or load()) first.")
    return value


class CollabSidBuilder:
    """Collaborative Semantic IDs: SASRec item embeddings on a window of the logs, quantized
    into a :class:`~freshsid.sid.table.SidTable` (:func:`freshsid.build_collab_sids`),
    and recoded on later logs (:meth:`recode`).

    Args:
        sasrec: the embedding model's config (default: the ``tiny`` preset's).
        sid: the tokenizer's config: levels, codebook size, suffix size.
        recipe: the recipe (:data:`freshsid.recipes.RECIPES`); it may change the legacy
            build's settings too, and :meth:`recode` follows it.
        seed: seed of the embedding model and the tokenizer.

    Attributes (after :meth:`fit`, :meth:`recode` or :meth:`load`):
        table_: the SidTable served (after an aligned recode, the aligned one).
        embeddings_: (n_items, dim) item embeddings the table was coded from, with the SASRec weights.
        build_: the build a later recode continues (:class:`~freshsid.CollabSids`;
            after an aligned recode, the refreshed build before alignment).
        plan_: after :meth:`recode`, what a fine-tune of a checkpoint that speaks the
            parent's table carries over first (None: nothing).
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
                 seed: int = 0) -> None:
        self.sasrec = sasrec
        self.sid = sid
        self.recipe = recipe
        self.seed = seed
        self.sids_: CollabSids | None = None
        self.build_: CollabSids | None = None
        self.plan_: RemapPlan | None = None
        self.logs_fingerprint_: str | None = None

    @classmethod
    def from_config(cls, config: str | ExperimentConfig = "tiny") -> CollabSidBuilder:
        """The builder an experiment config (or a preset's name) describes."""
        cfg = _config(config)
        return cls(sasrec=cfg.sasrec, sid=cfg.sid, recipe=cfg.recipe, seed=cfg.seed)

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments, as a manifest records them."""
        return {"sasrec": self.sasrec, "sid": self.sid, "recipe": self.recipe, "seed": self.seed}

    def configs(self) -> tuple[SASRecConfig, SidConfig]:
        """The run's SASRec and tokenizer configs before the recipe applies (defaults: ``tiny``)."""
        tiny = preset("tiny")
        return self.sasrec or tiny.sasrec, self.sid or tiny.sid

    def fit(self, split: TemporalSplit, window: Window, *, progress: bool = False) -> CollabSidBuilder:
        """Train SASRec on the events of ``window`` and code the window's items."""
        sasrec, sid = find_recipe(self.recipe).legacy_configs(*self.configs())
        built = build_collab_sids(split, window, sasrec=sasrec, sid=sid, seed=self.seed, progress=progress)
        self._learnt(built, built, None, split.logs.fingerprint)
        return self

    def recode(self, split: TemporalSplit, window: Window, *, mode: Literal["aligned", "incremental"] = "aligned",
               progress: bool = False) -> CollabSidBuilder:
        """A new builder with this one's SIDs recoded on the events of ``window`` as the recipe
        says: ``aligned`` rebuilds them and aligns them to this table
        (:func:`freshsid.recode.aligned`), ``incremental`` keeps every SID and codes the items
        this table lacks (:func:`freshsid.recode.incremental`). This one is left as it was.

        Examples:
            >>> fresh = builder.recode(split, freshsid.Window(start=0, stop=9))
            >>> fresh.table_.codebook_sizes == builder.table_.codebook_sizes
            True
        """
        served, build = _fitted(self, "sids_"), _fitted(self, "build_")
        sasrec, sid = self.configs()
        how, seed = find_recipe(self.recipe), self.seed
        if mode == "aligned":
            result = aligned(split, window, served, continued=build, recipe=how, sasrec=sasrec, sid=sid, seed=seed,
                             progress=progress)
        elif mode == "incremental":
            result = incremental(split, window, served.table, build, recipe=how, sasrec=sasrec, sid=sid, seed=seed,
                                 progress=progress)
        else:
            raise FreshsidError(f"Unknown recode mode {mode!r}; use aligned or incremental.")
        recoded = CollabSidBuilder(**self.get_params())
        recoded._learnt(result.sids, result.build, result.plan, split.logs.fingerprint)
        return recoded

    def _learnt(self, sids: CollabSids, build: CollabSids, plan: RemapPlan | None,
                logs_fingerprint: str | None) -> None:
        self.sids_, self.build_, self.plan_, self.logs_fingerprint_ = sids, build, plan, logs_fingerprint

    @property
    def table_(self) -> SidTable:
        return _fitted(self, "sids_").table

    @property
    def embeddings_(self) -> Embeddings:
        return _fitted(self, "sids_").embeddings

    def save(self, folder: str | Path) -> Path:
        """Write the embeddings, the table, the build a recode continues (when another) and
        the constructor's arguments under ``folder``."""
        sids, build = _fitted(self, "sids_"), _fitted(self, "build_")
        folder = Path(folder)
        sids.save(folder, self.logs_fingerprint_)
        if build.table.content_hash != sids.table.content_hash:
            build.save(folder / BUILD, self.logs_fingerprint_)
        params = {k: v.model_dump(mode="json") if v is not None and hasattr(v, "model_dump") else v
                  for k, v in self.get_params().items()}
        write_json_atomic(folder / PARAMS_FILE, params)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CollabSidBuilder:
        """A fitted builder from a folder :meth:`save` wrote, with the configs and the recipe it
        was built with (the SASRec weights come with the embeddings; the model itself is not
        rebuilt)."""
        folder = Path(folder)
        sids = CollabSids.load(folder)
        build = CollabSids.load(folder / BUILD) if (folder / BUILD).exists() else sids
        try:
            params = json.loads((folder / PARAMS_FILE).read_text())
        except (OSError, ValueError):
            raise FreshsidError(f"{folder} holds no readable {PARAMS_FILE}; save the builder again with this version "
                                "of freshsid.") from None
        builder = cls(sasrec=None if params["sasrec"] is None else SASRecConfig(**params["sasrec"]),
                      sid=None if params["sid"] is None else SidConfig(**params["sid"]), recipe=params["recipe"],
                      seed=int(params["seed"] if "seed" in params else params["random_state"]))  # (its earlier name)
        builder._learnt(sids, build, None, read_manifest(folder / sids.EMBEDDINGS).inputs.get("logs"))
        return builder


def align(legacy: SidTable, refreshed: SidTable, *, method: str = "hungarian") -> SidTable:
    """``refreshed`` with its codes relabelled, level by level, onto ``legacy``'s vocabulary
    (``method``: ``hungarian`` or ``greedy``); diagnostics in ``meta["stats"]["alignment"]``.

    Examples:
        >>> aligned = freshsid.align(builder.table_, fresh.build_.table, method="greedy")
        >>> aligned.codebook_sizes == builder.table_.codebook_sizes
        True
        >>> len(aligned.meta["stats"]["alignment"]["levels"]) == aligned.n_levels
        True
    """
    if method not in METHODS:
        raise FreshsidError(f"Unknown alignment method {method!r}; use one of {', '.join(METHODS)}.")
    return align_tables(legacy, refreshed, method=method)[0]  # type: ignore[arg-type]


def code_items(embeddings: Embeddings, split: TemporalSplit, window: Window, config: SidConfig, *,
               warm_from: SidTable | None = None, inputs: dict[str, str] | None = None) -> SidTable:
    """Fit a tokenizer (``config``) on the ``embeddings`` of the items seen in ``window`` and
    code them all: SIDs from any item vectors, collaborative or content. ``warm_from``: a
    table whose tokenizer the fit continues from; ``inputs``: fingerprints the table's
    manifest records (default: the logs').

    Examples:
        >>> table = freshsid.code_items(builder.embeddings_, split, freshsid.Window(start=0, stop=8),
        ...                             freshsid.preset("tiny").sid)
        >>> table.n_levels == freshsid.preset("tiny").sid.n_levels
        True
    """
    return recode.code_items(embeddings, split, window, config, inputs=inputs or {"logs": split.logs.fingerprint},
                             warm_from=warm_from)


class GenerativeRetriever:
    """The generative retriever over Semantic IDs: a decoder that reads a user's history
    as SID tokens and beam-decodes the next item's SID inside a trie of allowed items.

    Args:
        model: size preset of the network (``tiny``, ``cpu`` or ``paper``).
        fit_config: schedule of :meth:`fit` (from scratch); finetune_config: of :meth:`finetune`.
        recent_parts: :meth:`fit` then trains again on the last this many parts of its
            window with ``finetune_config`` (the recency pass; 0: none).
        max_history: items of history the model reads.
        beam: beam width of the decoding (default: ``k`` of each call).
        recipe: the recipe; its ``remap_levels`` say whether :meth:`finetune` onto another
            table first carries the code embeddings over (:func:`freshsid.recode.remap`).
        threads: torch intra-op threads while training (default: leave torch's setting).

    Attributes (after :meth:`fit`, :meth:`finetune` or :meth:`load`):
        model_: the torch module; manifest_: its checkpoint's manifest; table_: the SidTable
        it speaks; checkpoint_: the checkpoint folder.

    Examples:
        >>> base, gap, test = (freshsid.Window(start=a, stop=b) for a, b in ((0, 8), (8, 9), (9, 10)))
        >>> retriever = freshsid.GenerativeRetriever.from_config("tiny").fit(split, builder.table_, window=base)
        >>> tuned = retriever.finetune(split, fresh.table_, window=gap)
        >>> sorted(tuned.evaluate(split, test=test, allowed=base, ks=(10,)))
        ['ndcg@10', 'recall@10']
        >>> items, scores = tuned.recommend(split.examples(test).inputs[:2], split.examples(test).users[:2], k=5)
        >>> items.shape
        (2, 5)
    """

    def __init__(self, *, model: str = "tiny", fit_config: TrainConfig | None = None,
                 finetune_config: TrainConfig | None = None, recent_parts: int = 0, max_history: int = 20,
                 beam: int | None = None, recipe: str = "cold", threads: int | None = None) -> None:
        self.model = model
        self.fit_config = fit_config
        self.finetune_config = finetune_config
        self.recent_parts = recent_parts
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
        return cls(model=cfg.retriever, fit_config=cfg.fit, finetune_config=cfg.finetune, recent_parts=cfg.recent_parts,
                   max_history=cfg.protocol.max_history, beam=cfg.beam, recipe=cfg.recipe, threads=cfg.threads)

    def get_params(self) -> dict[str, Any]:
        return {"model": self.model, "fit_config": self.fit_config, "finetune_config": self.finetune_config,
                "recent_parts": self.recent_parts, "max_history": self.max_history, "beam": self.beam, "recipe": self.recipe,
                "threads": self.threads}

    def set_params(self, **params: Any) -> GenerativeRetriever:
        """Change constructor arguments in place (e.g. a loaded retriever's fine-tune schedule)."""
        unknown = set(params) - set(self.get_params())
        if unknown:
            raise FreshsidError(f"GenerativeRetriever has no parameter {sorted(unknown)[0]!r}; "
                                f"use one of {', '.join(self.get_params())}.")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    @property
    def trained_window_(self) -> Window:
        """The parts the checkpoint's training read, histories and targets together."""
        return pipeline.trained_span(_fitted(self, "manifest_"))

    def _out(self, out: str | Path | None) -> Path:
        if self.threads is not None:  # (as the experiment runner does before each training)
            torch.set_num_threads(self.threads)
        return Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="freshsid-")) / "checkpoint"

    def _learnt(self, result: Any, table: SidTable, out: Path) -> None:
        self.model_, self.manifest_, self.table_, self.checkpoint_ = result.model, result.manifest, table, out

    def fit(self, split: TemporalSplit, table: SidTable, *, window: Window, out: str | Path | None = None,
            progress: bool = False) -> GenerativeRetriever:
        """Train from scratch on the events of ``window`` (then, with ``recent_parts``, again on
        its last parts); the checkpoint goes to ``out`` (default: a temporary folder; keep it
        with :meth:`save`)."""
        folder = self._out(out)
        config = RetrieverConfig.preset(self.model, codebook_sizes=table.codebook_sizes, max_history=self.max_history)
        result = pipeline.fit(split, table, window=window, model_config=config,
                              train_config=self.fit_config or preset("tiny").fit, out=folder, show_progress=progress,
                              recent_parts=self.recent_parts, recent_config=self.finetune_config or preset("tiny").finetune)
        self._learnt(result, table, folder)
        return self

    def finetune(self, split: TemporalSplit, table: SidTable, *, window: Window, out: str | Path | None = None,
                 seed: int = 0, remap_levels: int | Literal["all"] | None = None,
                 progress: bool = False) -> GenerativeRetriever:
        """A new retriever warm-started from this one, trained with the loss on ``window``'s
        events only, over ``table`` (the same shape; e.g. an aligned refresh). This one is
        left as it was, so the two can be compared. ``seed`` is added to the schedule's seed.
        ``remap_levels``: levels of code embeddings carried onto ``table``'s codes first
        (default: the recipe's)."""
        checkpoint, spoken = _fitted(self, "checkpoint_"), _fitted(self, "table_")
        how = find_recipe(self.recipe)
        if remap_levels is not None:
            how = how.model_copy(update={"remap_levels": remap_levels})
        base = recode.finetune_config(spoken, table, how, self.finetune_config or preset("tiny").finetune)
        train_config = base.model_copy(update={"seed": base.seed + seed})
        plan = remap(spoken, table, how)
        folder = self._out(out)
        result = pipeline.finetune(checkpoint, split, table, target=window, train_config=train_config, out=folder,
                                   show_progress=progress, remap=plan)
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
        """Copy the checkpoint artifact to ``folder`` (atomically), with the constructor's
        arguments, which :meth:`load` restores."""
        source = _fitted(self, "checkpoint_")
        params = {k: v.model_dump(mode="json") if isinstance(v, TrainConfig) else v for k, v in self.get_params().items()}
        with artifact_dir(Path(folder)) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            write_json_atomic(tmp / RETRIEVER_PARAMS, params)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, table: SidTable, *, beam: int | None = None) -> GenerativeRetriever:
        """A fitted retriever from a checkpoint folder and the table it speaks: the one it
        was trained on, or one aligned to it (then it decodes, and fine-tunes, over the
        aligned codes as they are). The settings :meth:`save` kept come back (for a
        checkpoint the CLI wrote: its size, the ``tiny`` schedules, the ``cold`` recipe).
        ``beam``: overrides the kept one."""
        model, manifest = load_checkpoint(Path(folder), expected_shape=table.codebook_sizes)
        if manifest.info.get("sid_table") not in (None, table.content_hash, table.meta.get("parent")):
            raise FreshsidError(f"{folder} was trained on another SID table; pass the table it was trained on "
                                "or one aligned to it.")
        kept = Path(folder) / RETRIEVER_PARAMS
        if kept.exists():
            params = json.loads(kept.read_text())
            for name in ("fit_config", "finetune_config"):
                params[name] = None if params[name] is None else TrainConfig(**params[name])
        else:
            size = {k: getattr(model.config, k) for k in RETRIEVER_SIZES["tiny"]}
            params = {"model": next((n for n, sizes in RETRIEVER_SIZES.items() if sizes == size), "tiny"),
                      "max_history": model.config.max_history}
        params["max_history"] = model.config.max_history
        if beam is not None:
            params["beam"] = beam
        retriever = cls(**params)
        retriever.model_, retriever.manifest_, retriever.table_, retriever.checkpoint_ = model, manifest, table, Path(folder)
        return retriever
