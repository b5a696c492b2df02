"""The temporal protocol of the SID-staleness literature.

All events, sorted globally by time (stable), are cut into ``n_parts`` parts of
equal count (sizes differ by at most one). Windows are half-open ranges of
parts: by default base = [0, 8), gap = [8, 9), test = [9, 10).

Day-granular logs (every timestamp at the same time of day, as in the Amazon
files): the order of a day's events is file order, not time, so a cut inside a
day would put some of its events before the cut and some after by accident. Each
cut then moves to the nearer boundary of its day (the start of the day, or the
start of the next one; the start on a tie), so parts hold whole days and their
sizes differ by up to a day's events.

Test examples: every user with an event in the test window and at least one
earlier event; input = the user's last ``max_history`` earlier items in order;
labels = the set of items the user touches in the test window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from freshsid.errors import FreshsidError

if TYPE_CHECKING:  # the CLI reads Window without loading polars
    from freshsid.data.interactions import Interactions


class Window(BaseModel):
    """Half-open range of parts [start, stop).

    Examples:
        >>> from freshsid import Window
        >>> Window.parse("0:8") == Window(start=0, stop=8)
        True
        >>> str(Window(start=8, stop=9))
        '8:9'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: int
    stop: int

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"window [{self.start}, {self.stop}) must satisfy 0 <= start < stop")
        return self

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse ``"0:8"`` (half-open) into a window."""
        try:
            start, stop = (int(v) for v in text.split(":"))
            return cls(start=start, stop=stop)
        except ValueError:
            raise FreshsidError(f"Part range {text!r} is not START:STOP with 0 <= START < STOP, e.g. 0:8.") from None

    def __str__(self) -> str:
        return f"{self.start}:{self.stop}"


@dataclass(frozen=True, eq=False)
class Examples:
    """Test (or validation) examples.

    Attributes:
        users: (m,) dense user index.
        inputs: (m, max_history) item index of the last earlier items, left-padded with -1.
        label_indptr: (m + 1,) CSR offsets into ``label_items``.
        label_items: (nnz,) item index; each user's labels are unique and sorted.
    """

    users: np.ndarray
    inputs: np.ndarray
    label_indptr: np.ndarray
    label_items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def labels(self, i: int) -> np.ndarray:
        return self.label_items[self.label_indptr[i] : self.label_indptr[i + 1]]

    def subset(self, rows: np.ndarray) -> Examples:
        rows = np.asarray(rows)
        counts = np.diff(self.label_indptr)[rows]
        indptr = np.concatenate([[0], np.cumsum(counts)])
        take = np.concatenate([np.arange(self.label_indptr[r], self.label_indptr[r + 1]) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        return Examples(self.users[rows], self.inputs[rows], indptr, self.label_items[take])


class TemporalSplit:
    """Parts of equal count over a time-sorted :class:`Interactions` (on day-granular logs,
    each cut moved to the nearest day boundary).

    Examples:
        >>> split = freshsid.TemporalSplit(logs, n_parts=10)
        >>> sizes = split.part_sizes()
        >>> int(sizes.sum()) == logs.n_events and bool((sizes > 0).all())
        True
        >>> split.events(freshsid.Window(start=0, stop=8)).start
        0
    """

    def __init__(self, logs: Interactions, n_parts: int = 10) -> None:
        if n_parts < 2:
            raise FreshsidError(f"Number of parts must be at least 2, got {n_parts}.")
        if logs.n_events < n_parts:
            raise FreshsidError(f"{logs.name} has {logs.n_events} events, fewer than the {n_parts} parts asked for.")
        self.logs = logs
        self.n_parts = n_parts
        # bounds[p] is the first event of part p; integer division keeps sizes within one.
        self.bounds = (np.arange(n_parts + 1, dtype=np.int64) * logs.n_events) // n_parts
        if day_granular(logs.ts):
            self.bounds = whole_days(logs.ts, self.bounds)
            if (np.diff(self.bounds) <= 0).any():
                raise FreshsidError(f"{logs.name} spans too few days for {n_parts} parts of whole days; "
                                    "use fewer parts.")

    @property
    def equal_count(self) -> bool:
        """Whether the parts are the plain equal-count ones (no cut moved to a day boundary, no filter)."""
        plain = (np.arange(self.n_parts + 1, dtype=np.int64) * self.logs.n_events) // self.n_parts
        return bool(np.array_equal(self.bounds, plain))

    @classmethod
    def at(cls, logs: Interactions, cuts: list[int]) -> TemporalSplit:
        """Parts cut at the given event positions instead of equal counts: part 0 is
        ``[0, cuts[0])``, the last ``[cuts[-1], n_events)`` (e.g. the events a release saw
        and the ones since)."""
        bounds = np.array([0, *cuts, logs.n_events], dtype=np.int64)
        if (np.diff(bounds) <= 0).any():
            raise FreshsidError(f"Cuts {list(cuts)} must split {logs.n_events} events into non-empty parts.")
        split = cls.__new__(cls)
        split.logs, split.n_parts, split.bounds = logs, len(bounds) - 1, bounds
        return split

    def events(self, window: Window) -> slice:
        """The event positions of a window, as a slice of the time-sorted arrays."""
        self._check(window)
        return slice(int(self.bounds[window.start]), int(self.bounds[window.stop]))

    def _check(self, window: Window) -> None:
        if window.stop > self.n_parts:
            raise FreshsidError(f"Window {window} reaches past the last part ({self.n_parts - 1}); use parts 0:{self.n_parts}.")

    def part_sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def allowed_items(self, window: Window) -> np.ndarray:
        """Sorted item indices seen in the window's events."""
        return np.unique(self.logs.item[self.events(window)])

    def new_items(self, window: Window) -> np.ndarray:
        """Items whose first event falls in the window."""
        first = self.bounds[window.start]
        seen_before = np.zeros(self.logs.n_items, dtype=bool)
        seen_before[self.logs.item[:first]] = True
        inside = self.allowed_items(window)
        return inside[~seen_before[inside]]

    def examples(self, target: Window, *, max_history: int = 20, history_start: int = 0) -> Examples:
        """Users with an event in ``target`` and at least one earlier event (from part
        ``history_start`` on); input = last ``max_history`` earlier items, labels = target items."""
        cut = int(self.bounds[target.start])
        lo = int(self.bounds[history_start])
        span = self.events(target)
        logs = self.logs
        hist_users = logs.user[lo:cut]
        target_users = np.unique(logs.user[span])
        has_history = np.zeros(logs.n_users, dtype=bool)
        has_history[hist_users] = True
        users = target_users[has_history[target_users]]

        inputs = last_items(hist_users, logs.item[lo:cut], users, max_history)
        # Labels: unique (user, item) pairs of the target window, grouped by user.
        keep = has_history[logs.user[span]]
        pairs = np.unique(np.stack([logs.user[span][keep], logs.item[span][keep]], axis=1), axis=0)
        counts = np.bincount(np.searchsorted(users, pairs[:, 0]), minlength=len(users))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Examples(users, inputs, indptr, pairs[:, 1].astype(np.int64))

    def report(self, target: Window) -> dict[str, int | float]:
        """Users excluded from evaluation and labels on items unseen before the window."""
        span = self.events(target)
        users_in = np.unique(self.logs.user[span])
        ex = self.examples(target)
        seen = np.zeros(self.logs.n_items, dtype=bool)
        seen[self.logs.item[: span.start]] = True
        unseen = int((~seen[ex.label_items]).sum())
        return {
            "test_users": len(ex),
            "excluded_users": int(len(users_in) - len(ex)),
            "labels": int(len(ex.label_items)),
            "labels_on_unseen_items": unseen,
            "unseen_label_share": unseen / max(1, len(ex.label_items)),
        }


DAY = 86_400


def day_granular(ts: np.ndarray) -> bool:
    """Whether every timestamp (Unix seconds) falls at the same time of day, and more than one day is seen."""
    ts = np.asarray(ts)
    return len(ts) > 1 and ts[0] != ts[-1] and bool((ts % DAY == ts[0] % DAY).all())


def whole_days(ts: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``bounds`` (first event of each part, 0 and n first and last) with every inner cut moved
    to the nearer start of a day of the sorted timestamps ``ts``: the start of the cut's day,
    or the start of the next day, whichever is fewer events away (the earlier on a tie)."""
    bounds = np.asarray(bounds, dtype=np.int64).copy()
    inner = bounds[1:-1]
    day = ts[np.minimum(inner, len(ts) - 1)]
    start = np.searchsorted(ts, day, side="left")
    end = np.searchsorted(ts, day, side="right")
    bounds[1:-1] = np.where(inner - start <= end - inner, start, end)
    return bounds


def kcore_before(split: TemporalSplit, test: Window, k: int) -> TemporalSplit:
    """``split`` with the events before ``test`` cut down to their ``k``-core (every user and
    item left with at least ``k`` of them, repeated until stable); the test part and later
    events are kept whole, so the filter knows nothing of the future. Every part keeps its
    span of time (its cuts follow the events kept before them)."""
    if k < 1:
        raise FreshsidError(f"k-core must be at least 1, got {k}.")
    logs = split.logs
    cut = int(split.bounds[test.start])
    user, item = logs.user[:cut], logs.item[:cut]
    alive = np.ones(cut, dtype=bool)
    while True:
        users = np.bincount(user[alive], minlength=logs.n_users)
        items = np.bincount(item[alive], minlength=logs.n_items)
        drop = alive & ((users[user] < k) | (items[item] < k))
        if not drop.any():
            break
        alive &= ~drop
    keep = np.concatenate([alive, np.ones(logs.n_events - cut, dtype=bool)])
    filtered = replace(logs, user=logs.user[keep], item=logs.item[keep], ts=logs.ts[keep])
    bounds = np.concatenate([[0], np.cumsum(keep)])[split.bounds]
    if (np.diff(bounds) <= 0).any():
        raise FreshsidError(f"A {k}-core of the events before the test part leaves a part empty; use a smaller --kcore.")
    out = TemporalSplit.__new__(TemporalSplit)
    out.logs, out.n_parts, out.bounds = filtered, split.n_parts, bounds
    return out


def last_items(event_users: np.ndarray, event_items: np.ndarray, users: np.ndarray, length: int) -> np.ndarray:
    """(len(users), length) last ``length`` items of each user's time-ordered events,
    left-padded with -1. ``users`` must be sorted."""
    order = np.argsort(event_users, kind="stable")  # by user, time order kept within a user
    su, si = event_users[order], event_items[order]
    end = np.searchsorted(su, users, side="right")
    start = np.searchsorted(su, users, side="left")
    out = np.full((len(users), length), -1, dtype=np.int64)
    # Column j (from the right) holds the item at position end-1-j when it exists.
    for j in range(length):
        pos = end - 1 - j
        ok = pos >= start
        out[ok, length - 1 - j] = si[pos[ok]]
    return out
