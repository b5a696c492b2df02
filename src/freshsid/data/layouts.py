"""The paper's large public logs, read as they are published: Yambda and VK-LSVD.

Both are recognised from the files themselves, like the Amazon and MovieLens
originals (:mod:`freshsid.data.originals`), and streamed with polars scans (no pandas
round-trip), so only the three event columns of the events that count reach memory.

- **Yambda** (Yandex music, "flat" layout): a parquet file with ``uid``, ``item_id``,
  ``timestamp`` and, in ``multi_event.parquet``, ``event_type`` (listen, like, dislike,
  unlike, undislike), ``is_organic``, ``played_ratio_pct`` and ``track_length_seconds``.
  Its timestamps are the dataset's own relative ticks, which order events as well as
  Unix seconds do. A file with an ``event_type`` column counts, unless told otherwise,
  the dataset's *Listen+* events: listens of more than half the track
  (:data:`YAMBDA_DEFAULT_WHERE`).
- **VK-LSVD** (VK short videos): a folder of weekly parquet shards
  (``interactions/{train,validation,test}/week_NN.parquet``, or the shards themselves)
  with ``user_id``, ``item_id``, ``timespent`` and feedback flags (``like``, ``share``,
  ...), plus ``metadata/item_embeddings.npz`` (``item_id``, ``embedding``). The shards
  carry no timestamp: rows are in time order within a week, so the position of an
  event in (week, row) order is its time. Every row counts unless told otherwise.

Which events count is a SQL condition over the file's columns (``where``), e.g.
``event_type = 'listen' AND is_organic = 1 AND played_ratio_pct >= 80`` or
``timespent >= 10 OR "like"``, evaluated by polars (:func:`polars.sql_expr`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from freshsid.data.interactions import Interactions, from_arrays
from freshsid.errors import FreshsidError

Layout = Literal["yambda", "vk-lsvd"]
YAMBDA_COLUMNS = ("uid", "item_id", "timestamp")
VK_COLUMNS = ("user_id", "item_id", "timespent")
YAMBDA_DEFAULT_WHERE = "event_type = 'listen' AND played_ratio_pct > 50"
VK_EMBEDDINGS = Path("metadata") / "item_embeddings.npz"
WEEK = re.compile(r"^week_(\d+)\.parquet$")


def parquet_columns(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError):
        return []


def vk_shards(folder: Path) -> list[Path]:
    """The weekly shards of a VK-LSVD folder in time order (``interactions/`` when the
    folder is the dataset's root, so the ``subsamples/`` copies are not read twice)."""
    root = folder / "interactions" if (folder / "interactions").is_dir() else folder
    shards = [p for p in root.rglob("week_*.parquet") if WEEK.match(p.name)]
    weeks: dict[int, Path] = {}
    for shard in shards:
        week = int(WEEK.match(shard.name).group(1))  # type: ignore[union-attr]
        if week in weeks:
            raise FreshsidError(f"{weeks[week]} and {shard} are both week {week}; point --logs at one copy of the "
                                "interactions (e.g. the interactions/ folder or one subsample).")
        weeks[week] = shard
    return [weeks[w] for w in sorted(weeks)]


def layout_of(path: Path) -> Layout | None:
    """Which large layout ``path`` is in, from its columns (None: neither)."""
    if path.is_dir():
        shards = vk_shards(path)
        return "vk-lsvd" if shards and set(VK_COLUMNS) <= set(parquet_columns(shards[0])) else None
    if path.suffix != ".parquet":
        return None
    columns = set(parquet_columns(path))
    if set(YAMBDA_COLUMNS) <= columns:
        return "yambda"
    if set(VK_COLUMNS) <= columns and "timestamp" not in columns:
        return "vk-lsvd"
    return None


def condition(where: str, path: Path) -> pl.Expr:
    """The polars expression of a SQL condition, or a clear error."""
    try:
        return pl.sql_expr(where)
    except Exception as exc:  # polars raises several types for a bad expression
        raise FreshsidError(f"--where {where!r} is not a SQL condition polars can read ({_first_line(exc)}); "
                            f"write one over the columns of {path}, e.g. \"played_ratio_pct >= 50\".") from None


def scan_events(path: Path, layout: Layout, *, where: str | None = None) -> pl.LazyFrame:
    """The events that count, as a lazy frame of ``user_id``, ``item_id``, ``timestamp``
    (file order; nothing is read until it is collected)."""
    if layout == "yambda":
        frame = pl.scan_parquet(path)
        if where is None and "event_type" in parquet_columns(path):
            where = YAMBDA_DEFAULT_WHERE
        if where is not None:
            frame = frame.filter(condition(where, path))
        return frame.select(pl.col("uid").alias("user_id"), "item_id", pl.col("timestamp").cast(pl.Int64))
    shards = vk_shards(path) if path.is_dir() else [path]
    # The (week, row) position is the time: numbered before the filter drops rows.
    frame = pl.concat([pl.scan_parquet(s) for s in shards], how="vertical_relaxed").with_row_index("timestamp")
    if where is not None:
        frame = frame.filter(condition(where, path))
    return frame.select("user_id", "item_id", pl.col("timestamp").cast(pl.Int64))


def load_layout(path: Path, layout: Layout, *, where: str | None = None, name: str | None = None) -> Interactions:
    """Stream the events that count into :class:`Interactions` (sorted by time, ids densified)."""
    try:
        events = scan_events(path, layout, where=where).collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise FreshsidError(f"Cannot read {path} as {layout} logs ({_first_line(exc)}); check --where and the "
                            "file's columns.") from None
    nulls = events.null_count().row(0)
    if any(nulls):
        raise FreshsidError(f"{path} has events without a user, item or timestamp; drop them or filter them out with --where.")
    if events.height < 2:
        raise FreshsidError(f"{path} holds {events.height} event(s) that count (--where {where!r}); the temporal "
                            "protocol needs at least 2, so loosen the condition.")
    if layout == "yambda" and events.get_column("timestamp").min() < 0:  # type: ignore[operator]
        raise FreshsidError(f"{path} has negative timestamps; Yambda's are non-negative ticks, so check the file.")
    return from_arrays(events.get_column("user_id").to_numpy(), events.get_column("item_id").to_numpy(),
                       events.get_column("timestamp").to_numpy(), name=name or _name(path, layout))


def vk_item_embeddings(path: Path, logs: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """VK-LSVD's content embeddings for the items of ``logs``: (n_items, dim) float32 rows
    in dense-item order (zeros where the file has none) and the (n_covered,) dense items
    it covers. ``path``: the ``item_embeddings.npz`` file or the dataset's root."""
    file = path / VK_EMBEDDINGS if path.is_dir() else path
    try:
        with np.load(file, allow_pickle=False) as npz:
            ids, vectors = np.asarray(npz["item_id"]), np.asarray(npz["embedding"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise FreshsidError(f"Cannot read item embeddings from {file} ({_first_line(exc)}); pass VK-LSVD's "
                            "metadata/item_embeddings.npz, which holds item_id and embedding arrays.") from None
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise FreshsidError(f"{file} holds {len(ids)} item ids for embeddings of shape {vectors.shape}; "
                            "pass an unmodified item_embeddings.npz.")
    known = pl.DataFrame({"item_id": logs.item_ids, "item": np.arange(logs.n_items)})
    rows = pl.DataFrame({"item_id": ids.astype(logs.item_ids.dtype, copy=False), "row": np.arange(len(ids))})
    matched = known.join(rows, on="item_id", how="inner")
    out = np.zeros((logs.n_items, vectors.shape[1]), dtype=np.float32)
    covered = matched.get_column("item").to_numpy()
    out[covered] = vectors[matched.get_column("row").to_numpy()]
    return out, np.sort(covered)


def _name(path: Path, layout: Layout) -> str:
    return f"{layout}-{path.stem if path.is_file() else path.name}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
