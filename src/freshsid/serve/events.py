"""What a release has seen, and which events of newer logs are new to it.

Positions are not identities: the same logs loaded with or without duplicates, or
re-exported in another file order, put an event at another index. So a release records
what it saw by time (:func:`seen_record`): the last second it saw, how many distinct
events (user, item, second) it saw before that second, and the distinct (user, item)
pairs of that last second itself, which a part boundary may have cut in two.

:func:`new_events` reads newer logs against that record: every event after the last
second is new, and so is every event of the last second the release did not see. Logs
that contradict the record (they end before it, or lack events the release was trained
on) are refused with a message that says so; events that arrived late, dated before
the last second but never seen by the release, are counted and kept as history only,
since no window the release was trained on can take them any more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from freshsid.data.interactions import Interactions
from freshsid.errors import FreshsidError


def seen_record(logs: Interactions, until_event: int) -> dict[str, Any]:
    """The record of the first ``until_event`` events of ``logs`` (time order), for a manifest."""
    if until_event == 0:
        return {"until_time": None, "events_before": 0, "last_second": []}
    until_time = int(logs.ts[until_event - 1])
    before = int(np.searchsorted(logs.ts, until_time, side="left"))
    return {"until_time": until_time, "events_before": _distinct(logs, slice(0, before)),
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
    before = _distinct(logs, slice(0, lo))
    if before < seen["events_before"]:
        raise FreshsidError(f"{logs.name} holds {before:,} distinct events before {_day(until_time)} where release "
                            f"{release_id} saw {seen['events_before']:,}: the events it was trained on changed; pass the "
                            "logs it was built from, extended.")
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
    return NewEvents(reordered, start, logs.n_events - start, before - seen["events_before"])


def _distinct(logs: Interactions, span: slice) -> int:
    """Distinct (user, item, second) events in ``span``: duplicates dropped or kept count once."""
    return pl.DataFrame({"u": logs.user[span], "i": logs.item[span], "t": logs.ts[span]}).n_unique()


def _pairs(logs: Interactions, span: slice) -> set[tuple[str, str]]:
    return set(zip(logs.user_ids[logs.user[span]].astype(str).tolist(),
                   logs.item_ids[logs.item[span]].astype(str).tolist(), strict=True))


def _day(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
