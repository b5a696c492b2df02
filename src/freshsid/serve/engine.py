"""A release ready to answer: who the users are, what they saw, what the items are called.

The HTTP service and the batch job both ask an :class:`Engine` for recommendations; it
wraps one release (a :class:`~freshsid.retriever.pipeline.Recommender` over every item
its table codes) so that swapping releases is swapping engines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freshsid.errors import FreshsidError
from freshsid.retriever.pipeline import Recommender
from freshsid.serve.release import Release

ANONYMOUS = -1  # the user token of a request that gives a history instead of a known user


class UnknownUser(FreshsidError):
    """A user id the release has no history for."""


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float


class Engine:
    """Recommendations from one release, by original user and item ids."""

    def __init__(self, release: Release, *, beam: int) -> None:
        self.release, self.beam = release, beam
        self.recommender = Recommender(release.model, release.table)
        length = release.model.config.max_history
        self._users = release.histories["user"].to_numpy()
        self._row = {user_id: row for row, user_id in enumerate(release.histories["user_id"].to_list())}
        self._histories = np.full((len(self._users), length), -1, dtype=np.int64)
        for row, items in enumerate(release.histories["items"].to_list()):
            items = items[-length:]
            self._histories[row, length - len(items):] = items
        catalog = release.catalog
        self._ids = dict(zip(catalog["item"].to_list(), catalog["item_id"].to_list()))
        self._titles = dict(zip(catalog["item"].to_list(), catalog["title"].to_list()))
        self._item = {item_id: item for item, item_id in self._ids.items()}

    @property
    def release_id(self) -> str:
        return self.release.id

    def user_ids(self) -> list[str]:
        return list(self._row)

    def for_users(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(histories (m, T), dense users (m,)) of known users."""
        missing = [u for u in user_ids if u not in self._row]
        if missing:
            raise UnknownUser(f"User {missing[0]!r} is not in release {self.release_id}; pass a known user_id or a history.")
        rows = np.array([self._row[u] for u in user_ids], dtype=np.int64)
        return self._histories[rows], self._users[rows]

    def for_history(self, item_ids: list[str]) -> np.ndarray:
        """(T,) dense items of a history given as original ids (items the release does not know are skipped)."""
        length = self._histories.shape[1]
        items = [self._item[i] for i in item_ids if i in self._item][-length:]
        row = np.full(length, -1, dtype=np.int64)
        row[length - len(items):] = items
        return row

    def recommend(self, histories: np.ndarray, users: np.ndarray, ks: list[int],
                  exclude_seen: list[bool]) -> list[list[Recommendation]]:
        """Top ``ks[i]`` items for each row; with ``exclude_seen[i]`` the row's history items are left out."""
        if max(ks) > self.beam:
            raise FreshsidError(f"k = {max(ks)} is more than the service's beam width {self.beam}; ask for fewer items.")
        extra = histories.shape[1] if any(exclude_seen) else 0
        items, scores = self.recommender(histories, users, top_k=min(self.beam, max(ks) + extra), beam=self.beam)
        out = []
        for row, (k, exclude) in enumerate(zip(ks, exclude_seen, strict=True)):
            seen = set(histories[row][histories[row] >= 0].tolist()) if exclude else set()
            picks = [(i, s) for i, s in zip(items[row].tolist(), scores[row].tolist()) if i >= 0 and i not in seen][:k]
            out.append([Recommendation(self._ids[i], self._titles[i], float(s)) for i, s in picks])
        return out
