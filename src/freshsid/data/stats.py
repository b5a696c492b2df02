"""Descriptive statistics of a log under the temporal protocol.

What a reader needs before trusting an experiment: sizes, the time span, how the
equal-count parts fall in calendar time, how many items appear for the first time
in each part (the cold-start pressure that makes SIDs stale), and how many test
labels no model could reach because their item was never seen before the test window.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from freshsid.data.interactions import Interactions
from freshsid.data.temporal import TemporalSplit, Window


def iso_date(ts: int) -> str:
    """Unix seconds -> ``YYYY-MM-DD`` (UTC)."""
    return datetime.fromtimestamp(int(ts), tz=UTC).date().isoformat()


def first_part_of_items(split: TemporalSplit) -> np.ndarray:
    """(n_items,) the part in which each item is first seen."""
    logs = split.logs
    _, first = np.unique(logs.item, return_index=True)
    return np.searchsorted(split.bounds, first, side="right") - 1


def dataset_stats(logs: Interactions, *, n_parts: int = 10, test: Window | None = None) -> dict[str, Any]:
    """Sizes, time span, per-part counts and date ranges, new items per part and the
    test-window report (``test`` defaults to the last part).

    Returns a JSON-ready dict; ``test.labels_on_unseen_items`` counts the labels that
    are unreachable for any model restricted to items seen before the test window.
    """
    split = TemporalSplit(logs, n_parts=n_parts)
    test = test or Window(start=n_parts - 1, stop=n_parts)
    new_per_part = np.bincount(first_part_of_items(split), minlength=n_parts)
    parts = []
    for p in range(n_parts):
        lo, hi = int(split.bounds[p]), int(split.bounds[p + 1])
        parts.append(
            {
                "part": p,
                "events": hi - lo,
                "start": iso_date(logs.ts[lo]) if hi > lo else None,
                "end": iso_date(logs.ts[hi - 1]) if hi > lo else None,
                "new_items": int(new_per_part[p]),
            }
        )
    return {
        "name": logs.name,
        "users": logs.n_users,
        "items": logs.n_items,
        "events": logs.n_events,
        "first_event": iso_date(logs.ts[0]),
        "last_event": iso_date(logs.ts[-1]),
        "span_days": int((logs.ts[-1] - logs.ts[0]) // 86_400),
        "n_parts": n_parts,
        "test_window": str(test),
        "parts": parts,
        "test": split.report(test),
    }
