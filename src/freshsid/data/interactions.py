"""The in-memory event log every stage reads: dense ids, global time order.

Loaders (``freshsid.data.logs``) turn files into an :class:`Interactions`; from
then on users and items are dense integers, so sequence building, embeddings
and SID tables index numpy arrays directly. Original ids travel alongside for
reports and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from freshsid.artifacts import fingerprint_of


@dataclass(frozen=True, eq=False)
class Interactions:
    """Events sorted by time (stable: ties keep file order).

    Attributes:
        user: (n,) int64 dense user index in [0, n_users).
        item: (n,) int64 dense item index in [0, n_items).
        ts: (n,) int64 Unix seconds, non-decreasing.
        user_ids: (n_users,) original user ids, in dense-index order.
        item_ids: (n_items,) original item ids, in dense-index order.
        items: item metadata, one row per dense item (columns ``item``, ``title``,
            ``brand``, ``categories``, ``attributes``; empty strings where unknown).
        name: a short label for reports (dataset name or file stem).
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pl.DataFrame = field(repr=False)
    name: str = "logs"

    def __post_init__(self) -> None:
        n = len(self.ts)
        assert self.user.shape == (n,) and self.item.shape == (n,), "event arrays differ in length"
        assert n == 0 or bool(np.all(np.diff(self.ts) >= 0)), "events must be time-sorted"

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def fingerprint(self) -> str:
        """Cheap content id: sizes plus a strided sample of the event arrays."""
        step = max(1, self.n_events // 4096)
        sample = np.concatenate([self.user[::step], self.item[::step], self.ts[::step]]).tolist()
        return fingerprint_of([self.name, self.n_events, self.n_users, self.n_items, sample])

    def item_text(self) -> list[str]:
        """One descriptive string per item for the text encoder (title, brand, categories;
        attributes where there is no title)."""
        texts = []
        for row in self.items.iter_rows(named=True):
            parts = [row["title"] or row["attributes"], row["brand"], row["categories"]]
            texts.append(" | ".join(p for p in parts if p))
        return texts


def from_arrays(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    ts: np.ndarray,
    *,
    items: pl.DataFrame | None = None,
    name: str = "logs",
) -> Interactions:
    """Build :class:`Interactions` from raw (user, item, timestamp) columns in file order.

    Sorts stably by time and densifies ids (dense index = order of first appearance in
    time order, which keeps dense ids stable when later logs are appended). ``items``
    (optional) is metadata keyed by an ``item_id`` column matching ``item_ids``.
    """
    ts = np.asarray(ts, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    user_raw = np.asarray(user_ids)[order]
    item_raw = np.asarray(item_ids)[order]
    user_index, user_vocab = _densify(user_raw)
    item_index, item_vocab = _densify(item_raw)
    meta = _align_metadata(item_vocab, items)
    return Interactions(user_index, item_index, ts, user_vocab, item_vocab, meta, name)


def _densify(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense index by first appearance: (n,) int64 codes and the (m,) vocabulary."""
    if values.dtype.kind in "iu" and len(values):
        low, high = int(values.min()), int(values.max())
        # Integer ids of modest range: a hash-based ordered unique plus a lookup table is
        # O(n), where np.unique's sorts dominate loading 10M events.
        if high - low <= 4 * len(values) + 1_000_000:
            vocab = pl.Series(values).unique(maintain_order=True).to_numpy()
            lookup = np.empty(high - low + 1, dtype=np.int64)
            lookup[vocab - low] = np.arange(len(vocab))
            return lookup[values - low], vocab.astype(values.dtype, copy=False)
    vocab, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(len(vocab), dtype=np.int64)
    by_first = np.argsort(first, kind="stable")
    rank[by_first] = np.arange(len(vocab))
    return rank[inverse.reshape(-1)], vocab[by_first]


TEXT_COLUMNS = ("title", "brand", "categories", "attributes")


def _align_metadata(item_vocab: np.ndarray, items: pl.DataFrame | None) -> pl.DataFrame:
    """One metadata row per dense item, text columns filled with '' where unknown."""
    frame = pl.DataFrame({"item": np.arange(len(item_vocab)), "item_id": item_vocab})
    if items is not None and items.height:
        keep = ["item_id", *[c for c in TEXT_COLUMNS if c in items.columns]]
        meta = items.select(keep).unique("item_id", keep="first")
        meta = meta.with_columns(pl.col("item_id").cast(frame.schema["item_id"], strict=False))
        frame = frame.join(meta, on="item_id", how="left")
    for column in TEXT_COLUMNS:
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit("").alias(column))
        frame = frame.with_columns(pl.col(column).cast(pl.Utf8).fill_null(""))
    return frame.select("item", "item_id", *TEXT_COLUMNS).sort("item")
