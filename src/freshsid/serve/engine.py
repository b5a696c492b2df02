"""A release ready to answer: who the users are, what they saw, what the items are called.

The HTTP service and the batch job both ask an :class:`Engine` for recommendations; it
wraps one release (a :class:`~freshsid.retriever.pipeline.Recommender` over every item
its table codes) so that swapping releases is swapping engines. The service may have an
engine decode in a process of its own (:mod:`freshsid.serve.decoder`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshsid.errors import FreshsidError
from freshsid.retriever.pipeline import Recommender
from freshsid.serve.decoder import DecodeProcess
from freshsid.serve.metrics import item_age_labels
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

    def __init__(self, release: Release, *, beam: int, compile_step: bool = False,
                 process_threads: int | None = None) -> None:
        """``process_threads``: decode in a child process with that many torch threads
        (:class:`~freshsid.serve.decoder.DecodeProcess`) rather than on the caller's thread."""
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
        # each item's JSON but its score, made once: an answer is then a join, not a json.dumps of dicts
        self._fragments = {i: json.dumps({"item_id": self._ids[i], "title": self._titles[i]})[:-1] + ', "score": '
                           for i in self._ids}
        # staleness read from traffic: which users' histories hold items the table cannot code,
        # and how long each item had been known when the release was made
        held = self._histories >= 0
        self._uncoded = (held & ~np.isin(self._histories, release.table.items)).any(axis=1)
        until = release.manifest.info.get("data", {}).get("until_time")
        self._age = (dict(zip(catalog["item"].to_list(), item_age_labels(catalog["first_seen"].to_numpy(), until)))
                     if "first_seen" in catalog.columns and until is not None else {})
        self._search: Callable[..., tuple[np.ndarray, np.ndarray]] = self.recommender
        if process_threads is not None:
            self._search = DecodeProcess(self.recommender, threads=process_threads, compile_step=compile_step)
        elif compile_step:
            release.model.compile_step()
        if compile_step and len(self._users):  # compiled here, by one decode, rather than on a request
            self.decode(self._histories[:1], self._users[:1], [1], [False])

    def close(self) -> None:
        """End the decode process, if the engine has one (else nothing to do)."""
        if isinstance(self._search, DecodeProcess):
            self._search.close()

    @property
    def release_id(self) -> str:
        return self.release.id

    @property
    def longest_id(self) -> int:
        """Characters of the longest user or item id the release serves."""
        return max((len(i) for i in (*self._row, *self._item)), default=0)

    def describe(self) -> dict[str, Any]:
        """What ``GET /release`` shows: lineage, what the release saw as counts and times
        (never the (user, item) pairs it records), recipe, gate figures."""
        info = self.release.manifest.info
        data = {k: v for k, v in info.get("data", {}).items() if k not in ("last_second", "days")}
        data["last_second_events"] = len(info.get("data", {}).get("last_second", []))
        return {"release": self.release_id, "created": self.release.manifest.created,
                "parent_release": info.get("parent_release"), "data": data,
                **{k: info.get(k) for k in ("recipe", "refresh", "metrics", "n_items")}}

    def user_ids(self) -> list[str]:
        return list(self._row)

    def for_users(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(histories (m, T), dense users (m,)) of known users."""
        missing = [u for u in user_ids if u not in self._row]
        if missing:
            raise UnknownUser(f"User {missing[0]!r} is not in release {self.release_id}; pass a known user_id or a history.")
        rows = np.array([self._row[u] for u in user_ids], dtype=np.int64)
        return self._histories[rows], self._users[rows]

    def user_uncoded(self, user_id: str) -> bool:
        """Whether a known user's history holds items the release cannot code."""
        return bool(self._uncoded[self._row[user_id]])

    def for_history(self, item_ids: list[str]) -> tuple[np.ndarray, bool]:
        """(T,) dense items of a history given as original ids (items the release does not code
        are skipped), and whether there were any such items."""
        length = self._histories.shape[1]
        coded = [self._item[i] for i in item_ids if i in self._item]
        row = np.full(length, -1, dtype=np.int64)
        items = coded[-length:]
        row[length - len(items):] = items
        return row, len(coded) < len(item_ids)

    def ages(self, items: np.ndarray) -> list[str]:
        """The age label of each recommended (dense) item; none for a release without first-seen times."""
        return [self._age[i] for i in items.tolist()] if self._age else []

    def decode(self, histories: np.ndarray, users: np.ndarray, ks: list[int],
               exclude_seen: list[bool]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(dense items (<= ks[i],), scores) for each row, all rows in one beam search; with
        ``exclude_seen[i]`` the row's history items are left out, and the search is widened
        by the number of distinct items in the history so that ``ks[i]`` items remain whenever
        the catalog has them."""
        if max(ks) > self.beam:
            raise FreshsidError(f"k = {max(ks)} is more than the service's beam width {self.beam}; ask for fewer items.")
        seen = [len(np.unique(row[row >= 0])) if exclude else 0 for row, exclude in zip(histories, exclude_seen, strict=True)]
        width = min(len(self._ids), max(k + n for k, n in zip(ks, seen, strict=True)))
        items, scores = self._search(histories, users, top_k=width, beam=max(self.beam, width),
                                     batch_size=max(1, len(histories)))
        out = []
        for row, (k, exclude) in enumerate(zip(ks, exclude_seen, strict=True)):
            keep = items[row] >= 0
            if exclude:
                keep &= ~np.isin(items[row], histories[row][histories[row] >= 0])
            out.append((items[row][keep][:k], scores[row][keep][:k]))
        return out

    def recommend(self, histories: np.ndarray, users: np.ndarray, ks: list[int],
                  exclude_seen: list[bool]) -> list[list[Recommendation]]:
        """As :meth:`decode`, as ids, titles and scores."""
        return [[Recommendation(self._ids[i], self._titles[i], float(s)) for i, s in zip(items.tolist(), scores.tolist())]
                for items, scores in self.decode(histories, users, ks, exclude_seen)]

    def render(self, items: np.ndarray, scores: np.ndarray) -> bytes:
        """The JSON answer to one request, from the item fragments made once per release."""
        parts = [self._fragments[i] + repr(s) + "}" for i, s in zip(items.tolist(), scores.tolist())]
        return f'{{"release": {json.dumps(self.release_id)}, "items": [{", ".join(parts)}]}}'.encode()
