"""The recode step: new SIDs for a legacy build from the logs up to now, and the remap plan
the fine-tune on them needs. The experiment, rolling, the production refresh and the
Python API call this module and nothing else to change SIDs.

Two modes, one function each:

- :func:`aligned` (Baikalov et al., SIGIR 2026): a SASRec-style model gives item
  embeddings on a window of the logs, a tokenizer quantizes them into a SidTable, and
  alignment relabels that table's codes, level by level, onto the served table's so that
  a checkpoint trained on the legacy SIDs stays meaningful. The recipe
  (:mod:`freshsid.recipes`) says what the recode continues from the legacy build (its
  SASRec weights, its tokenizer), which items take their aligned code (all, the share
  whose neighbourhood moved most, or those that drifted with confidence:
  :func:`drift_kept_items`) and how the fine-tune on the new SIDs starts (:func:`remap`).
- :func:`incremental` (a frozen vocabulary): every served SID kept, the items the served
  table lacks coded by its tokenizer as it is, from the build's SASRec continued on the
  window (so their vectors live in the space that tokenizer reads).

Compute convention: every table built here records in ``meta["compute"]`` the
tokenizer fit (``tokenizer_seconds``, ``tokenizer_flops``) and, separately, the
embedding model it quantizes (``embedding_seconds``, ``embedding_flops``); an
aligned table keeps its refreshed table's figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from freshsid.config import SASRecConfig, SidConfig, TrainConfig
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.embed.collab import SASRec, collab_embeddings
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.recipes import Recipe
from freshsid.retriever.remap import RemapPlan, extends
from freshsid.sid.align import METHODS, align, resolve_suffix, stick
from freshsid.sid.build import build_table, make_tokenizer
from freshsid.sid.table import SidTable


NEIGHBOURS = 10  # neighbours compared per item when deciding whether its behaviour moved
SERVED = "hungarian"  # the alignment whose table is served and fine-tuned on


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
class Recoded:
    """What the recode step hands the fine-tune and the next step.

    ``build``: the new build, whose SASRec and tokenizer the next step continues (for
    :func:`aligned` the refreshed build before alignment, for :func:`incremental` the
    served table extended); ``aligned``: method -> the refreshed table relabelled onto the
    served vocabulary (each with ``meta["stats"]["alignment"]``), empty for incremental;
    ``plan``: what the fine-tune on :attr:`table` carries over first (None: nothing)."""

    build: CollabSids
    aligned: dict[str, SidTable]
    plan: RemapPlan | None

    @property
    def table(self) -> SidTable:
        """The SIDs to fine-tune on and serve."""
        return self.aligned[SERVED] if self.aligned else self.build.table

    @property
    def sids(self) -> CollabSids:
        """:attr:`table` with the embeddings it was coded from."""
        return CollabSids(self.build.embeddings, self.table)

    def save(self, folder: Path, logs_fingerprint: str) -> None:
        self.build.save(folder, logs_fingerprint)
        for method, table in self.aligned.items():
            table.save(Path(folder) / f"aligned-{method}")

    @classmethod
    def load(cls, folder: Path, *, spoken: SidTable, recipe: Recipe) -> Recoded:
        """A saved step; ``spoken`` and ``recipe`` as the step was given them (the plan is
        derived again from them)."""
        aligned = {m: SidTable.load(Path(folder) / f"aligned-{m}") for m in METHODS if (Path(folder) / f"aligned-{m}").exists()}
        build = CollabSids.load(folder)
        return cls(build, aligned, remap(spoken, aligned.get(SERVED, build.table), recipe))


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
        embeddings: vectors in the space the legacy tokenizer reads (:func:`incremental`
            places the new items there); its rows of the legacy items measure the code
            consistency recorded in the table's stats.
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
    # Code consistency: how many legacy SIDs the tokenizer gives back from the vectors used
    # (1 when they are the vectors it was fit on; a drifted space gives fewer).
    again = tokenizer.transform(embeddings.vectors[legacy.items]) == legacy.codes[:, :-1]
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
    incremental = {"coded_by": legacy.content_hash, "new_items": int(len(new)), "embeddings_window": embeddings.window,
                   "consistency": {"levels": again.mean(axis=0).tolist(), "prefix": float(again.all(axis=1).mean())}}
    meta = {**legacy.meta, "parent": legacy.content_hash, "stats": {**legacy.meta.get("stats", {}), "incremental": incremental},
            "compute": {"embedding_seconds": float(embeddings.compute.get("seconds", 0.0)),
                        "embedding_flops": float(embeddings.compute.get("flops", 0.0)), "tokenizer_seconds": seconds,
                        "tokenizer_flops": 2.0 * len(new) * sizes[0] * embeddings.vectors.shape[1] * legacy.n_levels}}
    return SidTable(items=all_items[order], codes=codes.astype(np.int32), codebook_sizes=sizes,
                    item_ids=np.asarray(item_ids)[all_items[order]], meta=meta, tokenizer_state=legacy.tokenizer_state)


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


def drift_kept_items(legacy: SidTable, refreshed: CollabSids, events: np.ndarray, *, margin: float,
                     min_events: int) -> tuple[np.ndarray, dict]:
    """Drift-confident re-coding (after DACT, arXiv 2603.29705): the items both tables code
    that keep their legacy SID, and what was measured.

    An item moves only when its collaborative evidence moved with confidence: in the
    refreshed embedding space it lies farther than ``1 + margin`` times its distance to the
    nearest other legacy first-level code's centroid from its own one's (the centroids of
    the refreshed vectors grouped by legacy first-level code), *and* it has at least
    ``min_events`` of ``events`` (n_items,), its events in the window's last part. How many
    move is the outcome, recorded in the stats (``moved_share``)."""
    common = np.intersect1d(refreshed.table.items, legacy.items)
    vectors = refreshed.embeddings.vectors[common].astype(np.float64)
    codes = legacy.codes_for(common)[:, 0].astype(np.int64)
    sizes = np.bincount(codes, minlength=legacy.codebook_sizes[0])
    centroids = np.zeros((len(sizes), vectors.shape[1]))
    np.add.at(centroids, codes, vectors)
    centroids /= np.maximum(sizes, 1)[:, None]
    far = np.zeros(len(common), dtype=bool)
    for start in range(0, len(common), 1 << 14):  # (blocks: an (items, codes) matrix of a whole catalog is large)
        block = slice(start, start + (1 << 14))
        rows = np.arange(len(vectors[block]))
        d2 = (vectors[block] ** 2).sum(1)[:, None] - 2 * vectors[block] @ centroids.T + (centroids ** 2).sum(1)[None]
        d2[:, sizes == 0] = np.inf
        own = np.maximum(d2[rows, codes[block]], 0.0)
        d2[rows, codes[block]] = np.inf
        far[block] = np.sqrt(own) > (1 + margin) * np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    busy = np.asarray(events)[common] >= min_events
    moves = far & busy
    stats = {"common_items": int(len(common)), "margin": margin, "min_events": min_events,
             "far_share": float(far.mean()) if len(common) else 0.0,
             "busy_share": float(busy.mean()) if len(common) else 0.0,
             "moved_items": int(moves.sum()), "moved_share": float(moves.mean()) if len(common) else 0.0}
    return common[~moves], stats


def finetune_config(spoken: SidTable, table: SidTable, recipe: Recipe, config: TrainConfig) -> TrainConfig:
    """The settings of a fine-tune on ``table`` of a checkpoint that speaks ``spoken``: the
    recipe's over the run's ``config`` when ``table`` moves a SID the checkpoint speaks (a
    refresh's fine-tune), the run's when it keeps them all (the same SIDs, new items coded)."""
    return config if extends(table, spoken) else recipe.finetune_config(config)


def remap(spoken: SidTable, table: SidTable, recipe: Recipe) -> RemapPlan | None:
    """What a fine-tune on ``table`` of a checkpoint that speaks ``spoken`` carries over
    first: the recipe's levels of code embeddings, or nothing when it carries none or
    ``table`` keeps every SID the checkpoint speaks (its own table, or one that only adds
    items)."""
    levels = recipe.carried_levels(spoken.n_levels)
    if not levels or extends(table, spoken):
        return None
    return RemapPlan(spoken, levels, **recipe.finetune_start())


def aligned(split: TemporalSplit, window: Window, legacy: CollabSids, *, recipe: Recipe, sasrec: SASRecConfig,
            sid: SidConfig, seed: int, methods: tuple[str, ...] = (SERVED,), continued: CollabSids | None = None,
            progress: bool = True) -> Recoded:
    """Rebuild collaborative SIDs on ``window`` as ``recipe`` says and align them to
    ``legacy`` (the served embeddings and table).

    ``sasrec`` and ``sid`` are the run's configs; the recipe's settings for the recode
    apply over them, and the SID shape is the legacy table's (alignment needs the same
    shape). ``continued``: the build a warm recipe continues (default ``legacy``; in a chain
    of recodes, the previous step's :attr:`Recoded.build`). ``methods``: the alignments
    made (the served one, ``hungarian``, always)."""
    if recipe.carried_levels(legacy.table.n_levels) > legacy.table.n_levels:
        raise FreshsidError(f"Recipe {recipe.name!r} carries {recipe.remap_levels} levels of code embeddings but the "
                            f"SIDs have {legacy.table.n_levels}; use a recipe that carries fewer (remap-1) or none (cold).")
    sasrec, sid = recipe.recode_configs(sasrec, sid)
    sizes = legacy.table.codebook_sizes
    if len(set(sizes[:-1])) != 1:
        raise FreshsidError(f"The legacy table's levels differ in size ({list(sizes)}); freshsid refits one size per level.")
    sid = sid.model_copy(update={"n_levels": len(sizes) - 1, "codebook_size": sizes[0], "suffix_size": sizes[-1]})
    refreshed = build_collab_sids(split, window, sasrec=sasrec, sid=sid, seed=seed, warm_from=continued or legacy,
                                  recipe=recipe, progress=progress)
    tables = {method: align(legacy.table, refreshed.table, method=method)[0]
              for method in dict.fromkeys((SERVED, *methods))}  # type: ignore[arg-type]
    if recipe.move_share < 1:
        keep = unmoved_items(legacy, refreshed, recipe.move_share)
        tables = {m: stick(legacy.table, table, keep) for m, table in tables.items()}
    elif recipe.drift_margin is not None:
        newest = split.logs.item[split.events(Window(start=window.stop - 1, stop=window.stop))]
        keep, drift = drift_kept_items(legacy.table, refreshed, np.bincount(newest, minlength=split.logs.n_items),
                                       margin=recipe.drift_margin, min_events=recipe.drift_min_events)
        drift["events_window"] = str(Window(start=window.stop - 1, stop=window.stop))
        tables = {m: _with_stats(stick(legacy.table, table, keep), drift=drift) for m, table in tables.items()}
    return Recoded(refreshed, tables, remap(legacy.table, tables[SERVED], recipe))


def _with_stats(table: SidTable, **stats: dict) -> SidTable:
    return replace(table, meta={**table.meta, "stats": {**table.meta.get("stats", {}), **stats}})


def incremental(split: TemporalSplit, window: Window, served: SidTable, continued: CollabSids, *, recipe: Recipe,
                sasrec: SASRecConfig, sid: SidConfig, seed: int, progress: bool = True) -> Recoded:
    """``served`` unchanged, code for code, plus the items seen in ``window`` it lacks,
    coded by its tokenizer as it is (:func:`code_new_items`), from vectors in the space of
    ``continued``'s SASRec, the space that tokenizer read (``recipe.incremental`` says how:
    fold-in, a Procrustes map, or the continued SASRec as it is).

    ``served`` must hold its tokenizer's state (a table this module built or extended, or
    one it aligned); ``continued`` must hold its SASRec's weights."""
    if continued.embeddings is None or continued.embeddings.state is None:
        raise FreshsidError("Incremental coding continues the build's SASRec, whose weights are not at hand (an old "
                            "build saved none); rebuild the SIDs, or recode them with a cold recipe.")
    continuing, _ = recipe.recode_configs(sasrec, sid)
    _, coding = recipe.legacy_configs(sasrec, sid)
    items = split.allowed_items(window)
    new = np.setdiff1d(items, served.items)
    embeddings, _ = collab_embeddings(split.logs, split.events(window), window=str(window), config=continuing,
                                      seed=seed, progress=progress, init_state=continued.embeddings.state,
                                      fold_in=new if recipe.incremental == "fold-in" else None)
    if recipe.incremental == "procrustes":
        embeddings = mapped_onto(embeddings, continued.embeddings, served.items)
    table = code_new_items(served, embeddings, items, split.logs.item_ids, coding)
    table.meta["stats"]["incremental"]["vectors"] = recipe.incremental
    return Recoded(CollabSids(embeddings, table), {}, None)  # no served SID moved: nothing to carry over


def mapped_onto(moved: Embeddings, anchor: Embeddings, common: np.ndarray) -> Embeddings:
    """``moved``'s vectors mapped onto ``anchor``'s space (orthogonal Procrustes, centred,
    fit on the ``common`` items); the common items take their ``anchor`` vectors."""
    source, target = moved.vectors[common].astype(np.float64), anchor.vectors[common].astype(np.float64)
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - mu_s).T @ (target - mu_t))
    vectors = ((moved.vectors - mu_s) @ (u @ vt) + mu_t).astype(np.float32)
    vectors[common] = anchor.vectors[common]
    return replace(moved, vectors=vectors)
