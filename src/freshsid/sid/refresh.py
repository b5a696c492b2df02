"""The refresh: collaborative SIDs rebuilt on recent logs and aligned to the legacy vocabulary.

This is the method's core step (Baikalov et al., SIGIR 2026): a SASRec-style model
gives item embeddings on a window of the logs, a tokenizer quantizes them into a
SidTable, and alignment relabels that table's codes, level by level, onto the
legacy table's so that a checkpoint trained on the legacy SIDs stays meaningful.
A *recipe* (:data:`freshsid.config.RECIPES`) sets the SASRec and tokenizer of both
builds and says what the refresh continues from the legacy build (its SASRec
weights, its tokenizer) instead of starting afresh. The experiment, the CLI, the
production refresh and the benchmarks all build and refresh SIDs through the
functions here.

Compute convention: every table built here records in ``meta["compute"]`` the
tokenizer fit (``tokenizer_seconds``, ``tokenizer_flops``) and, separately, the
embedding model it quantizes (``embedding_seconds``, ``embedding_flops``); an
aligned table keeps its refreshed table's figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from freshsid.config import RECIPES, Recipe, SASRecConfig, SidConfig
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.embed.collab import SASRec, collab_embeddings
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.sid.align import METHODS, align, resolve_suffix, stick
from freshsid.sid.build import build_table, make_tokenizer
from freshsid.sid.table import SidTable


NEIGHBOURS = 10  # neighbours compared per item when deciding whether its behaviour moved


def recipe(name: str) -> Recipe:
    """The named recipe."""
    if name not in RECIPES:
        raise FreshsidError(f"Unknown refresh recipe {name!r}; use one of {', '.join(RECIPES)}.")
    return RECIPES[name]


@dataclass(frozen=True)
class CollabSids:
    """Collaborative embeddings on a window and the SidTable that codes that window's items.

    ``sasrec`` is the fitted embedding model, in memory right after a build only (its
    weights are saved with the embeddings)."""

    embeddings: Embeddings | None  # None for a served table, which ships no embeddings
    table: SidTable
    sasrec: SASRec | None = field(default=None, compare=False)

    EMBEDDINGS = "embeddings"
    TABLE = "sids"

    def save(self, folder: Path, logs_fingerprint: str) -> None:
        self.embeddings.save(Path(folder) / self.EMBEDDINGS, logs_fingerprint)
        self.table.save(Path(folder) / self.TABLE)

    @classmethod
    def load(cls, folder: Path) -> CollabSids:
        return cls(Embeddings.load(Path(folder) / cls.EMBEDDINGS), SidTable.load(Path(folder) / cls.TABLE))


@dataclass(frozen=True)
class Refresh:
    """A refresh's outputs: the refreshed build and its alignments (method -> aligned table;
    each table's ``meta["stats"]["alignment"]`` holds the diagnostics)."""

    recipe: Recipe
    refreshed: CollabSids
    aligned: dict[str, SidTable]

    def save(self, folder: Path, logs_fingerprint: str) -> None:
        self.refreshed.save(folder, logs_fingerprint)
        for method, table in self.aligned.items():
            table.save(Path(folder) / f"aligned-{method}")

    @classmethod
    def load(cls, folder: Path, recipe_name: str) -> Refresh:
        aligned = {m: SidTable.load(Path(folder) / f"aligned-{m}") for m in METHODS if (Path(folder) / f"aligned-{m}").exists()}
        return cls(recipe(recipe_name), CollabSids.load(folder), aligned)


def code_items(embeddings: Embeddings, split: TemporalSplit, window: Window, config: SidConfig, *,
               inputs: dict[str, str], warm_from: SidTable | None = None) -> SidTable:
    """Fit a tokenizer on the embeddings of every item seen in ``window`` and code them all
    (an item the embedding model never trained on is coded from its initial row).
    ``warm_from``: a table whose tokenizer the fit continues from."""
    init = None
    if warm_from is not None:
        if warm_from.tokenizer_state is None:
            raise FreshsidError("The table to continue from holds no tokenizer state (an older version built or "
                                "aligned it); pass a table that `freshsid sids build` wrote.")
        init = warm_from.tokenizer_state
    logs = split.logs
    items = split.allowed_items(window)
    table, _ = build_table(embeddings.vectors[items], items, logs.item_ids[items], config, window=str(window),
                           inputs=inputs, init_state=init)
    table.meta["compute"].update(embedding_seconds=float(embeddings.compute.get("seconds", 0.0)),
                                 embedding_flops=float(embeddings.compute.get("flops", 0.0)))
    return table


def build_collab_sids(split: TemporalSplit, window: Window, *, sasrec: SASRecConfig, sid: SidConfig, seed: int,
                      warm_from: CollabSids | None = None, recipe: Recipe | None = None,
                      progress: bool = True) -> CollabSids:
    """SASRec embeddings trained on ``window`` and the SidTable of that window's items.
    With ``warm_from`` (an earlier build), ``recipe`` says which of its models to continue."""
    if (warm_from is None) != (recipe is None):
        raise ValueError("warm_from and recipe go together")
    init = None
    if recipe is not None and recipe.warm_embeddings:
        init = warm_from.embeddings.state if warm_from.embeddings is not None else None
        if init is None:
            raise FreshsidError(f"Recipe {recipe.name!r} continues the legacy SASRec, but its weights are not at hand "
                                "(a release ships none, an old build saved none); use a recipe that starts afresh.")
    embeddings, model = collab_embeddings(split.logs, split.events(window), window=str(window), config=sasrec,
                                          seed=seed, progress=progress, init_state=init)
    table = code_items(embeddings, split, window, sid, inputs={"logs": split.logs.fingerprint},
                       warm_from=warm_from.table if recipe is not None and recipe.warm_tokenizer else None)
    return CollabSids(embeddings, table, model)


def code_new_items(legacy: SidTable, embeddings: Embeddings, items: np.ndarray, item_ids: np.ndarray,
                   config: SidConfig) -> SidTable:
    """``legacy`` plus the ``items`` it lacks, coded by the legacy tokenizer as it is
    (incremental coding, what a team with a frozen vocabulary does): no legacy SID moves.

    Args:
        legacy: a table a tokenizer wrote (it carries the tokenizer's state).
        embeddings: vectors of the new items in the space the legacy tokenizer reads
            (the refreshed SASRec's; under a warm recipe that space continues the legacy one).
        items: dense items to add (those already coded are ignored); item_ids: (n_items,)
            the logs' original ids in dense order.
        config: the legacy build's tokenizer config (kind and settings; the shape is the table's).

    The suffix of a new item is the smallest one its prefix group leaves free
    (:func:`freshsid.sid.align.resolve_suffix`: every legacy item claims its own). The
    result keeps the legacy tokenizer's state, so that it codes the next items in turn.
    """
    if legacy.tokenizer_state is None:
        raise FreshsidError("The legacy table holds no tokenizer state (an older version built or aligned it); pass the "
                            "table `freshsid sids build` wrote.")
    new = np.setdiff1d(np.asarray(items, dtype=np.int64), legacy.items)
    sizes = legacy.codebook_sizes
    config = config.model_copy(update={"n_levels": legacy.n_levels, "codebook_size": sizes[0], "suffix_size": sizes[-1],
                                       "warm_epochs": 0})
    started = time.perf_counter()
    # Zero further epochs / iterations: the fit only restores the legacy tokenizer (it reads
    # the legacy items' rows for their width, and moves nothing).
    tokenizer = make_tokenizer(config, init_state=legacy.tokenizer_state).fit(embeddings.vectors[legacy.items])
    prefix = tokenizer.transform(embeddings.vectors[new]) if len(new) else np.zeros((0, legacy.n_levels), np.int32)
    all_items = np.concatenate([legacy.items, new])
    order = np.argsort(all_items, kind="stable")
    codes = np.concatenate([legacy.codes, np.column_stack([prefix, np.zeros(len(new), np.int64)])]).astype(np.int64)[order]
    in_new = np.argsort(order)[: len(legacy.items)]  # the rows of the legacy items after sorting
    codes[:, -1] = resolve_suffix(codes, in_new, legacy.codes.astype(np.int64))
    if codes[:, -1].max(initial=0) >= sizes[-1]:
        raise FreshsidError(f"Coding the new items crowds a prefix beyond the {sizes[-1]} suffix codes; raise the "
                            "suffix size.")
    seconds = time.perf_counter() - started
    # (under stats, which the table's manifest keeps: the legacy table that coded the new items)
    incremental = {"coded_by": legacy.content_hash, "new_items": int(len(new)), "embeddings_window": embeddings.window}
    meta = {**legacy.meta, "parent": legacy.content_hash, "stats": {**legacy.meta.get("stats", {}), "incremental": incremental},
            "compute": {"embedding_seconds": float(embeddings.compute.get("seconds", 0.0)),
                        "embedding_flops": float(embeddings.compute.get("flops", 0.0)), "tokenizer_seconds": seconds,
                        "tokenizer_flops": 2.0 * len(new) * sizes[0] * embeddings.vectors.shape[1] * legacy.n_levels}}
    return SidTable(items=all_items[order], codes=codes.astype(np.int32), codebook_sizes=sizes,
                    item_ids=np.asarray(item_ids)[all_items[order]], meta=meta, tokenizer_state=legacy.tokenizer_state)


def align_to_legacy(legacy: SidTable, refreshed: SidTable, methods: tuple[str, ...] = METHODS) -> dict[str, SidTable]:
    """``refreshed`` relabelled onto ``legacy``'s vocabulary by each method."""
    return {method: align(legacy, refreshed, method=method)[0] for method in methods}  # type: ignore[arg-type]


def neighbourhood_overlap(legacy: Embeddings, refreshed: Embeddings, items: np.ndarray, *, k: int = NEIGHBOURS) -> np.ndarray:
    """(len(items),) the share of each item's ``k`` nearest neighbours (cosine, among
    ``items``) that the legacy and the refreshed embedding spaces agree on: 1 where its
    neighbourhood did not move, 0 where it moved entirely."""
    items = np.asarray(items, dtype=np.int64)
    k = min(k, len(items) - 1)
    if k < 1:
        return np.ones(len(items))

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors[items], dtype=np.float32)
        faiss.normalize_L2(x)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        _, found = index.search(x, k + 1)
        # Move the item itself (or the last hit, where a duplicate vector outranked it) to the end.
        last = found == np.arange(len(items))[:, None]
        last[~last.any(axis=1), k] = True
        order = np.argsort(last, axis=1, kind="stable")
        return np.take_along_axis(found, order, axis=1)[:, :k]

    a, b = neighbours(legacy.vectors), neighbours(refreshed.vectors)
    return (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1) / k


def unmoved_items(legacy: CollabSids, refreshed: CollabSids, move_share: float) -> np.ndarray:
    """The items both tables code, but for the ``move_share`` of them whose neighbourhood
    moved most: those keep their legacy SIDs (:func:`freshsid.sid.align.stick`)."""
    if legacy.embeddings is None:
        raise FreshsidError("Keeping unmoved items' codes needs the legacy embeddings, which this build lacks "
                            "(a release ships none); use a recipe with move_share 1.")
    common = np.intersect1d(refreshed.table.items, legacy.table.items)
    overlap = neighbourhood_overlap(legacy.embeddings, refreshed.embeddings, common)
    order = np.argsort(overlap, kind="stable")  # least overlap (most moved) first
    return common[order[int(round(move_share * len(common))):]]


def refresh(split: TemporalSplit, window: Window, legacy: CollabSids, *, recipe: Recipe, sasrec: SASRecConfig,
            sid: SidConfig, seed: int, methods: tuple[str, ...] = METHODS, progress: bool = True,
            warm_from: CollabSids | None = None) -> Refresh:
    """Rebuild collaborative SIDs on ``window`` as ``recipe`` says and align them to ``legacy``.
    ``sasrec`` and ``sid`` are the run's configs; the recipe's settings for the refresh apply over
    them, and the SID shape is the legacy table's (alignment needs the same shape).
    ``warm_from``: the build a warm recipe continues (default ``legacy``; in a chain of
    refreshes, the previous unaligned build, whose table holds the tokenizer state)."""
    sasrec, sid = recipe.refresh_configs(sasrec, sid)
    sizes = legacy.table.codebook_sizes
    if len(set(sizes[:-1])) != 1:
        raise FreshsidError(f"The legacy table's levels differ in size ({list(sizes)}); freshsid refits one size per level.")
    sid = sid.model_copy(update={"n_levels": len(sizes) - 1, "codebook_size": sizes[0], "suffix_size": sizes[-1]})
    refreshed = build_collab_sids(split, window, sasrec=sasrec, sid=sid, seed=seed, warm_from=warm_from or legacy,
                                  recipe=recipe, progress=progress)
    aligned = align_to_legacy(legacy.table, refreshed.table, methods)
    if recipe.move_share < 1:
        keep = unmoved_items(legacy, refreshed, recipe.move_share)
        aligned = {m: stick(legacy.table, table, keep) for m, table in aligned.items()}
    return Refresh(recipe, refreshed, aligned)
