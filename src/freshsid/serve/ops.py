"""Operating a releases root: what is served and how stale it is, when to refresh, pruning.

The staleness signal needs no labels: the share of the events since the release that
fall on items its SID table cannot code — the rolling study's ``unseen`` signal
(:mod:`freshsid.evaluate.rolling`), read here from the logs up to now. ``refresh
--if-due`` refreshes when it reaches a threshold. Each refresh leaves its outcome in
``last-refresh.json`` beside the releases (the service exports it to Prometheus) and
one JSON line on stderr.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from typing import Any

import numpy as np

from freshsid.artifacts import Manifest, lock_held, output_lock, read_manifest, write_json_atomic
from freshsid.data.interactions import Interactions
from freshsid.errors import FreshsidError
from freshsid.serve import journal
from freshsid.serve.events import NewEvents, new_events, reindexed
from freshsid.serve.release import BUILD_EMBEDDINGS, KIND, POINTER, Release, Releases
from freshsid.sid.table import SidTable

LAST_REFRESH = "last-refresh.json"
REFRESH_LOCK = "refresh"  # root/.refresh.lock, held for a whole refresh
WORK = "work"  # root/work/refresh-*: a refresh's scratch (its fine-tune's checkpoint and resume state)
# A refresh's outcomes and the exit codes of `freshsid refresh` (2 is a user error, as everywhere); "superseded":
# an operator promoted or rolled back while it trained, so its candidate was kept unpromoted.
OUTCOMES = {"refreshed": 0, "not_due": 3, "refused_by_gate": 4, "superseded": 5, "failed": 2}
# What last-refresh.json may say besides: a refresh is running, or one was killed (found when none holds the lock).
STATES = (*OUTCOMES, "running", "interrupted")
DEFAULT_THRESHOLD = 0.05  # refresh once 5% of the events since the release fall on items it cannot code


def events_since(release: Release, logs: Interactions) -> NewEvents:
    """The events of ``logs`` new to ``release``, its users and items at its dense indices
    whatever the logs' row order (:func:`~freshsid.serve.events.reindexed`)."""
    logs = reindexed(logs, users=release.histories, items=release.catalog)
    release.table.check_item_ids(logs.item_ids, logs_name=logs.name)
    return new_events(logs, release.manifest.info["data"], release_id=release.id)


def unseen_share(release: Release, logs: Interactions) -> tuple[float, int]:
    """(share of the events new to ``release`` on items its table cannot code, how many new events)."""
    new = events_since(release, logs)
    return share_uncoded(new, release.table), new.taken


def share_uncoded(new: NewEvents, table: SidTable) -> float:
    """The share of the new events on items ``table`` cannot code (0 without new events)."""
    items = new.logs.item[new.start:]
    return float(np.mean(~np.isin(items, table.items))) if len(items) else 0.0


def record_refresh(releases: Releases, outcome: str, **fields: Any) -> None:
    """Leave the outcome of a refresh beside the releases and log it as one line; a failure
    is only left in the file (its error message is the command's one line on stderr), and
    so is "running", which a refresh leaves when it starts."""
    line = {"time": round(time.time(), 3), "event": "refresh", "outcome": outcome, "root": str(releases.root), **fields}
    if outcome not in ("failed", "running"):
        line = journal.record("refresh", outcome=outcome, root=str(releases.root), **fields)
    if releases.root.is_dir():
        write_json_atomic(releases.root / LAST_REFRESH, line)


def last_refresh(releases: Releases) -> dict[str, Any] | None:
    """The line the last refresh left; a "running" one whose refresh no longer holds the
    lock (killed) reads "interrupted". None if there is none."""
    try:
        last = json.loads((releases.root / LAST_REFRESH).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(last, dict):
        return None
    if last.get("outcome") == "running" and not lock_held(releases.root / REFRESH_LOCK):
        last = {**last, "outcome": "interrupted"}
    return last


def clean_scratch(releases: Releases) -> list[str]:
    """Remove the scratch folders of refreshes that were killed; call it holding the refresh lock."""
    stale = sorted((releases.root / WORK).glob("refresh-*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return [folder.name for folder in stale]


def manifests(releases: Releases) -> tuple[dict[str, Manifest], dict[str, str]]:
    """({id: manifest} of the releases whose manifest reads, {id: why not} of the damaged ones)."""
    good, damaged = {}, {}
    for release_id in releases.ids():
        try:
            good[release_id] = read_manifest(releases.path(release_id), KIND, verify=False)
        except FreshsidError as exc:
            damaged[release_id] = str(exc)
    return good, damaged


def status(releases: Releases, logs: Interactions | None = None) -> dict[str, Any]:
    """What ``releases`` serves: the current release, its lineage (parents back to the first),
    whether its files match its manifest, its age, training windows, how a refresh made it,
    whether it carries a SID build to continue, gate figures, the last refresh, damaged
    releases, and with ``logs`` the staleness signal now."""
    pointer = releases.pointer()
    if pointer["current"] is None:
        raise FreshsidError(f"{releases.root} has no current release; promote one with `freshsid release promote`.")
    infos, damaged = manifests(releases)
    current = pointer["current"]
    if current in damaged:
        raise FreshsidError(f"The current release {current} is damaged ({damaged[current]}); roll back or promote "
                            "another.")
    if current not in infos:
        raise FreshsidError(f"{releases.root / POINTER} names release {current}, which is not there; promote another.")
    try:
        releases.check(current)  # every file of it and of its inner artifacts against its hash, as a load would
        files = "ok"
    except FreshsidError as exc:
        files = f"damaged: {exc}"
    lineage, cursor = [], current
    while cursor is not None and cursor in infos and cursor not in lineage:
        lineage.append(cursor)
        cursor = infos[cursor].info.get("parent_release")
    manifest = infos[current]
    data = manifest.info.get("data", {})
    out: dict[str, Any] = {
        "root": str(releases.root), "current": current, "lineage": lineage, "rollback_to": (pointer["previous"] or [None])[-1],
        "releases": len(infos), "age_seconds": round(time.time() - manifest.created, 1),
        "data_until": data.get("until_time"), "history_window": data.get("history_window"),
        "target_window": data.get("target_window"), "refresh": manifest.info.get("refresh"),
        "carries_build": BUILD_EMBEDDINGS in manifest.inputs, "gate": manifest.info.get("metrics", {}),
        "n_items": manifest.info.get("n_items"), "current_files": files, "last_refresh": last_refresh(releases),
        "damaged": damaged,
    }
    if logs is not None:
        share, taken = unseen_share(releases.load_current(), logs)
        out["staleness"] = {"logs": logs.name, "new_events": taken, "unseen_share": share}
    return out


def prune(releases: Releases, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest releases, never the current one, its parent or the
    release a rollback would go back to, and the scratch of killed refreshes (unless a
    refresh is running); returns the ids removed."""
    if keep < 1:
        raise FreshsidError(f"--keep {keep} would remove every release; keep at least 1.")
    with contextlib.suppress(FreshsidError), output_lock(releases.root / REFRESH_LOCK):  # busy: a refresh runs
        scratch = clean_scratch(releases)
        if scratch:
            journal.record("scratch_removed", root=str(releases.root), removed=scratch)
    with output_lock(releases.root / POINTER):
        pointer = releases.pointer()
        current = pointer["current"]
        protected = {current, (pointer["previous"] or [None])[-1]}
        if current is not None:
            protected.add(read_manifest(releases.path(current), KIND, verify=False).info.get("parent_release"))
        ids = releases.ids()
        doomed = [i for i in ids[: max(0, len(ids) - keep)] if i not in protected]
        for release_id in doomed:
            trash = releases.root / "releases" / f".{release_id}.pruned"
            releases.path(release_id).rename(trash)  # one rename: a reader never sees half a release
            shutil.rmtree(trash)
        if doomed and current is not None:
            write_json_atomic(releases.root / POINTER, {"current": current,
                                                        "previous": [i for i in pointer["previous"] if i not in doomed]})
    if doomed:
        journal.record("prune", root=str(releases.root), removed=doomed, kept=[i for i in ids if i not in doomed])
    return doomed
