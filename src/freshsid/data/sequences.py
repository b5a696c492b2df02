"""User sequences for sequential training (SASRec embeddings and the retriever).

Both models learn from each user's time-ordered items; this is the one place
that groups events by user and cuts long histories into fixed-length windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Sequences:
    """Fixed-length training windows.

    Attributes:
        users: (m,) dense user index of each window.
        items: (m, length) item index, left-padded with -1.
        target: (m, length) bool, True where the item's prediction carries loss
            (e.g. only events of the fine-tuning window).
    """

    users: np.ndarray
    items: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def windows(
    user: np.ndarray,
    item: np.ndarray,
    *,
    length: int,
    is_target: np.ndarray | None = None,
    min_items: int = 2,
) -> Sequences:
    """Cut each user's time-ordered items into windows of ``length`` items.

    A history longer than ``length`` is covered by sliding windows with stride
    ``length - 1`` so that every item after a user's first one is predicted exactly
    once, with up to ``length - 1`` items of context. ``is_target`` (n,) marks events
    whose prediction carries loss (default: all); windows with no target are dropped.

    Args:
        user, item: (n,) events in time order.
        length: items per window (history + 1).
        is_target: (n,) bool or None.
        min_items: users with fewer events are skipped.
    """
    is_target = np.ones(len(user), dtype=bool) if is_target is None else np.asarray(is_target, dtype=bool)
    order = np.argsort(user, kind="stable")
    users, starts, counts = np.unique(user[order], return_index=True, return_counts=True)
    keep = counts >= min_items
    users, starts, counts = users[keep], starts[keep], counts[keep]
    stride = length - 1
    # Window w of a user ends at its item min(count, 1 + (w + 1) * stride) (exclusive).
    n_windows = np.maximum(1, -(-(counts - 1) // stride))
    owner = np.repeat(np.arange(len(users)), n_windows)
    w = np.arange(len(owner)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = np.minimum(counts[owner], 1 + (w + 1) * stride)
    begin = np.maximum(0, end - length)
    offsets = np.arange(length)[None, :] - length + end[:, None]  # (m, length) position within the user
    valid = offsets >= begin[:, None]
    flat = starts[owner][:, None] + np.where(valid, offsets, 0)
    items = np.where(valid, item[order][flat], -1)
    # The first item of a window only gives context, and so do items already
    # predicted by the previous window (positions below the previous end).
    first_new = np.where(w == 0, begin + 1, 1 + w * stride)
    target = valid & (offsets >= first_new[:, None]) & is_target[order][flat]
    has_target = target.any(axis=1)
    return Sequences(users[owner][has_target], items[has_target], target[has_target])


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row batches of similar length, in random order.

    Rows are shuffled, then sorted by length inside pools of 32 batches: a batch's
    members stay random while its padding (compute spent on nothing) shrinks.
    """
    order = rng.permutation(len(lengths))
    pool = 32 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def mixed(main: Sequences, replay: Sequences, share: float, rng: np.random.Generator) -> tuple[Sequences, int]:
    """As many windows as ``main`` holds, ``round(share * len(main))`` of them drawn from
    ``replay`` (without replacement; all of it when it holds fewer) and the rest from
    ``main``: replay at the same number of windows, so a fine-tune on the mix takes as many
    optimiser steps as on ``main`` alone. Returns the mix (``main``'s rows first) and how
    many of its rows are ``replay``'s."""
    if not 0 <= share < 1:
        raise ValueError("the replay share must be within [0, 1)")
    n_replay = min(int(round(share * len(main))), len(replay))
    take_main = np.sort(rng.choice(len(main), len(main) - n_replay, replace=False))
    take_replay = np.sort(rng.choice(len(replay), n_replay, replace=False))
    width = max(main.items.shape[1], replay.items.shape[1])

    def rows(seqs: Sequences, take: np.ndarray, what: str) -> np.ndarray:
        part = getattr(seqs, what)[take]
        pad = np.full((len(take), width - part.shape[1]), -1 if what == "items" else False, dtype=part.dtype)
        return np.concatenate([pad, part], axis=1)  # left-padded, as windows() writes them

    return Sequences(np.concatenate([main.users[take_main], replay.users[take_replay]]),
                     *(np.concatenate([rows(main, take_main, what), rows(replay, take_replay, what)])
                       for what in ("items", "target"))), n_replay

