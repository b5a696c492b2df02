"""What a release has seen, and which events of newer logs are new to it.

Positions are not identities: the same logs loaded with or without duplicates, or
re-exported in another file order, put an event at another index. So a release records
what it saw by time (:func:`seen_record`): the last second it saw, the distinct events
(user, item, second) it saw before that second, as a count and an order-independent
fingerprint per UTC day (a multiset hash: the sum of the events' 64-bit hashes, over
original ids), and the distinct (user, item) pairs of that last second itself, which a
part boundary may have cut in two.

:func:`new_events` reads newer logs against that record: every event after the last
second is new, and so is every event of the last second the release did not see. Logs
that contradict the record (they end before it, or a day lacks or changed events the
release was trained on) are refused with a message that names the day; events that
arrived late, dated before the last second but never seen by the release, are counted
and kept as history only, since no window the release was trained on can take them any
more. (A day that gained events is taken as late events: a removal hidden among more
late events of the same day is not seen.)

Dense ids come from the file order (:func:`~freshsid.data.interactions.from_arrays`), so
:func:`reindexed` gives newer logs the release's dense users and items, and the others
indices ordered by their first second and id: any row order of the same events gives
the same user tokens and item indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from freshsid.data.interactions import Interactions
from freshsid.errors import FreshsidError
from freshsid.retriever.model import splitmix64

DAY = 86_400


def seen_record(logs: Interactions, until_event: int) -> dict[str, Any]:
    """The record of the first ``until_event`` events of ``logs`` (time order), for a manifest."""
    if until_event == 0:
        return {"until_time": None, "events_before": 0, "last_second": []}
    until_time = int(logs.ts[until_event - 1])
    before = int(np.searchsorted(logs.ts, until_time, side="left"))
    days = _days(logs, slice(0, before))
    return {"until_time": until_time, "events_before": sum(count for count, _ in days.values()),
            "days": [[day, count, f"{digest:016x}"] for day, (count, digest) in sorted(days.items())],
            "last_second": sorted(_pairs(logs, slice(before, until_event)))}


@dataclass(frozen=True)
class NewEvents:
    """Newer logs read against a release's record.

    ``logs`` are the logs with, inside the release's last second, the events it saw put
    first (a stable reorder within one second, so time order holds); ``start`` is then
    the first new event, and ``logs`` events ``[start, n)`` are the new ones (``taken``).
    ``late``: distinct events dated before the last second that the release never saw.
    """

    logs: Interactions
    start: int
    taken: int
    late: int


def new_events(logs: Interactions, seen: dict[str, Any], *, release_id: str) -> NewEvents:
    """Which events of ``logs`` are new to the release whose record is ``seen``."""
    until_time = seen.get("until_time")
    if until_time is None or logs.n_events == 0:
        return NewEvents(logs, 0, logs.n_events, 0)
    if int(logs.ts[-1]) < until_time:
        raise FreshsidError(f"{logs.name} ends at {_day(logs.ts[-1])}, before {_day(until_time)}, the last second release "
                            f"{release_id} has seen: time goes backwards; pass the logs up to now.")
    lo, hi = (int(np.searchsorted(logs.ts, until_time, side=s)) for s in ("left", "right"))
    if "events_before" not in seen:  # a release from before this record: its whole last second counts as seen
        return NewEvents(logs, hi, logs.n_events - hi, 0)
    late = _late(logs, slice(0, lo), seen, until_time, release_id)
    known = {tuple(pair) for pair in seen["last_second"]}
    pairs = list(zip(logs.user_ids[logs.user[lo:hi]].astype(str).tolist(),
                     logs.item_ids[logs.item[lo:hi]].astype(str).tolist(), strict=True))
    missing = known - set(pairs)
    if missing:
        user, item = sorted(missing)[0]
        raise FreshsidError(f"{logs.name} lacks {len(missing):,} of the events of {_day(until_time)} that release "
                            f"{release_id} saw (e.g. user {user!r}, item {item!r}): the events it was trained on changed; "
                            "pass the logs it was built from, extended.")
    is_new = np.array([pair not in known for pair in pairs], dtype=bool)
    order = np.concatenate([np.arange(lo), lo + np.argsort(is_new, kind="stable"), np.arange(hi, logs.n_events)])
    reordered = replace(logs, user=logs.user[order], item=logs.item[order], ts=logs.ts[order])
    start = lo + int((~is_new).sum())
    return NewEvents(reordered, start, logs.n_events - start, late)


def _late(logs: Interactions, span: slice, seen: dict[str, Any], until_time: int, release_id: str) -> int:
    """How many distinct events of ``span`` (before the release's last second) it never saw;
    refuses logs that lack or changed events it saw, naming the day."""
    changed = "the events it was trained on changed; pass the logs it was built from, extended."
    if "days" not in seen:  # a release from before the per-day record: counts only
        before = pl.DataFrame({"u": logs.user[span], "i": logs.item[span], "t": logs.ts[span]}).n_unique()
        if before < seen["events_before"]:
            raise FreshsidError(f"{logs.name} holds {before:,} distinct events before {_day(until_time)} where release "
                                f"{release_id} saw {seen['events_before']:,}: {changed}")
        return before - seen["events_before"]
    days, late = _days(logs, span), 0
    for day, count, digest in seen["days"]:
        have, have_digest = days.pop(day, (0, 0))
        if have < count or (have == count and f"{have_digest:016x}" != digest):
            what = f"lacks {count - have:,} of the {count:,}" if have < count else f"holds other {count:,}"
            raise FreshsidError(f"{logs.name} {what} distinct events of {_day(day * DAY)[:10]} that release "
                                f"{release_id} saw: {changed}")
        late += have - count
    return late + sum(count for count, _ in days.values())


def _days(logs: Interactions, span: slice) -> dict[int, tuple[int, int]]:
    """{UTC day: (distinct events, the sum of their 64-bit hashes)} of the events in ``span``:
    the same whatever the row order, the dense ids or the duplicates."""
    user, item = _id_hashes(logs.user_ids)[logs.user[span]], _id_hashes(logs.item_ids)[logs.item[span]]
    ts = logs.ts[span]
    events, first = np.unique(splitmix64(splitmix64(user ^ splitmix64(item)) ^ ts.astype(np.uint64)), return_index=True)
    day = ts[first] // DAY
    order = np.argsort(day, kind="stable")
    days, starts, counts = np.unique(day[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(events[order], starts) if len(events) else np.zeros(0, dtype=np.uint64)
    return {int(d): (int(c), int(h)) for d, c, h in zip(days, counts, sums, strict=True)}


def _id_hashes(ids: np.ndarray) -> np.ndarray:
    """(n,) uint64: a stable hash of each original id."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in ids],
                    dtype=np.uint64)


def _pairs(logs: Interactions, span: slice) -> set[tuple[str, str]]:
    return set(zip(logs.user_ids[logs.user[span]].astype(str).tolist(),
                   logs.item_ids[logs.item[span]].astype(str).tolist(), strict=True))


def _day(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def reindexed(logs: Interactions, *, users: pl.DataFrame, items: pl.DataFrame) -> Interactions:
    """``logs`` with the dense users and items of a release: ``users`` (columns ``user``,
    ``user_id``) and ``items`` (``item``, ``item_id``) keep their index, and the others
    take the free indices by their first second, then their id, so that neither depends on
    the row order. Logs without every listed one are returned as they are (the checks
    that follow refuse them)."""
    user = _keeping(logs.user_ids, _first_seconds(logs.user, logs.n_users, logs.ts), users["user_id"], users["user"])
    item = _keeping(logs.item_ids, _first_seconds(logs.item, logs.n_items, logs.ts), items["item_id"], items["item"])
    if user is None or item is None:
        return logs
    user_ids, item_ids = np.empty_like(logs.user_ids), np.empty_like(logs.item_ids)
    user_ids[user], item_ids[item] = logs.user_ids, logs.item_ids
    meta = logs.items.with_columns(pl.Series("item", item[logs.items["item"].to_numpy()])).sort("item")
    return replace(logs, user=user[logs.user], item=item[logs.item], user_ids=user_ids, item_ids=item_ids, items=meta)


def _first_seconds(dense: np.ndarray, n: int, ts: np.ndarray) -> np.ndarray:
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, dense, ts)
    return first


def _keeping(ids: np.ndarray, first: np.ndarray, known_ids: pl.Series, known: pl.Series) -> np.ndarray | None:
    """(n,) new index of each of ``ids``: ``known`` for ``known_ids``, the free ones for the
    rest by (first second, id); None if a known id is missing or its index out of range."""
    keys = ids.astype(str)
    where = dict(zip(known_ids.cast(pl.Utf8).to_list(), known.to_list(), strict=True))
    new = np.array([where.get(k, -1) for k in keys.tolist()], dtype=np.int64)
    kept = new[new >= 0]
    if len(kept) != len(where) or (len(kept) and kept.max() >= len(ids)):
        return None
    others = np.flatnonzero(new < 0)
    new[others[np.lexsort((keys[others], first[others]))]] = np.setdiff1d(np.arange(len(ids)), kept)
    return new
