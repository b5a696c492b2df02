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


def shape_stats(logs: Interactions, *, n_parts: int = 10) -> dict[str, float]:
    """The shape of a log that the synthetic world is calibrated to (:mod:`freshsid.data.synthetic`).

    - history lengths: events per user (mean, median, 90th percentile, the share of users
      with fewer than 5) and the standard deviation of their logs (a lognormal's sigma);
    - popularity skew: the share of events on the top 1% and 10% of items, the Gini of item
      counts and the standard deviation of log item counts;
    - repeat rate: the share of events on an item the user had already had;
    - drift: the share of each part's events on items first seen in that part (mean over
      parts 1..n-1), and the correlation of items' log counts in consecutive parts (mean).
    """
    split = TemporalSplit(logs, n_parts=n_parts)
    per_user = np.bincount(logs.user, minlength=logs.n_users)
    per_user = per_user[per_user > 0]
    per_item = np.sort(np.bincount(logs.item, minlength=logs.n_items))[::-1]
    per_item = per_item[per_item > 0]
    top = lambda share: float(per_item[: max(1, round(share * len(per_item)))].sum() / per_item.sum())  # noqa: E731
    ascending = per_item[::-1].astype(np.float64)
    gini = float(1 - 2 * np.sum(np.cumsum(ascending) / ascending.sum()) / len(ascending) + 1 / len(ascending))
    pair = logs.user.astype(np.int64) * logs.n_items + logs.item
    _, first = np.unique(pair, return_index=True)
    first_part = first_part_of_items(split)
    part_of_event = np.searchsorted(split.bounds, np.arange(logs.n_events), side="right") - 1
    new_share = [float(np.mean(first_part[logs.item[split.events(Window(start=p, stop=p + 1))]] == p))
                 for p in range(1, n_parts)]
    counts = np.stack([np.bincount(logs.item[part_of_event == p], minlength=logs.n_items) for p in range(n_parts)])
    log_counts = np.log1p(counts)
    corr = [float(np.corrcoef(log_counts[p], log_counts[p + 1])[0, 1]) for p in range(n_parts - 1)]
    return {
        "users": int(len(per_user)),
        "items": int(len(per_item)),
        "events": int(logs.n_events),
        "events_per_user_mean": float(per_user.mean()),
        "events_per_user_median": float(np.median(per_user)),
        "events_per_user_p90": float(np.percentile(per_user, 90)),
        "users_under_5_events": float(np.mean(per_user < 5)),
        "log_events_per_user_sd": float(np.log(per_user).std()),
        "top_1pct_item_share": top(0.01),
        "top_10pct_item_share": top(0.10),
        "item_gini": gini,
        "log_events_per_item_sd": float(np.log(per_item).std()),
        "repeat_share": float(1 - len(first) / max(1, logs.n_events)),
        "new_item_event_share": float(np.mean(new_share)),
        "consecutive_part_popularity_corr": float(np.mean(corr)),
    }
