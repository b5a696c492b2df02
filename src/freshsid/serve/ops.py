"""Operating a releases root: what is served and how stale it is, when to refresh, pruning.

The staleness signal needs no labels: the share of the events since the release that
fall on items its SID table cannot code — the rolling study's ``unseen`` signal
(:mod:`freshsid.evaluate.rolling`), read here from the logs up to now. ``refresh
--if-due`` refreshes when it reaches a threshold. Each refresh leaves its outcome in
``last-refresh.json`` beside the releases (the service exports it to Prometheus) and
one JSON line on stderr.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import numpy as np

from freshsid.artifacts import output_lock, read_manifest, write_json_atomic
from freshsid.data.interactions import Interactions
from freshsid.errors import FreshsidError
from freshsid.serve import journal
from freshsid.serve.events import NewEvents, new_events
from freshsid.serve.release import BUILD_EMBEDDINGS, KIND, POINTER, Release, Releases
from freshsid.sid.table import SidTable

LAST_REFRESH = "last-refresh.json"
# A refresh's outcomes and the exit codes of `freshsid refresh` (2 is a user error, as everywhere).
OUTCOMES = {"refreshed": 0, "not_due": 3, "refused_by_gate": 4, "failed": 2}
DEFAULT_THRESHOLD = 0.05  # refresh once 5% of the events since the release fall on items it cannot code


def unseen_share(release: Release, logs: Interactions) -> tuple[float, int]:
    """(share of the events new to ``release`` on items its table cannot code, how many new events)."""
    release.table.check_item_ids(logs.item_ids, logs_name=logs.name)
    new = new_events(logs, release.manifest.info["data"], release_id=release.id)
    return share_uncoded(new, release.table), new.taken


def share_uncoded(new: NewEvents, table: SidTable) -> float:
    """The share of the new events on items ``table`` cannot code (0 without new events)."""
    items = new.logs.item[new.start:]
    return float(np.mean(~np.isin(items, table.items))) if len(items) else 0.0


def record_refresh(releases: Releases, outcome: str, **fields: Any) -> None:
    """Leave the outcome of a refresh beside the releases and log it as one line; a failure
    is only left in the file (its error message is the command's one line on stderr)."""
    line = {"time": round(time.time(), 3), "event": "refresh", "outcome": outcome, "root": str(releases.root), **fields}
    if outcome != "failed":
        line = journal.record("refresh", outcome=outcome, root=str(releases.root), **fields)
    if releases.root.is_dir():
        write_json_atomic(releases.root / LAST_REFRESH, line)


def status(releases: Releases, logs: Interactions | None = None) -> dict[str, Any]:
    """What ``releases`` serves: the current release, its lineage (parents back to the first),
    its age, training windows, how a refresh made it, whether it carries a SID build to
    continue, gate figures, the last refresh, and with ``logs`` the staleness signal now."""
    pointer = releases.pointer()
    if pointer["current"] is None:
        raise FreshsidError(f"{releases.root} has no current release; promote one with `freshsid release promote`.")
    infos = {i: read_manifest(releases.path(i), KIND, verify=False) for i in releases.ids()}
    current = pointer["current"]
    if current not in infos:
        raise FreshsidError(f"{releases.root / POINTER} names release {current}, which is not there; promote another.")
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
        "n_items": manifest.info.get("n_items"), "last_refresh": _last_refresh(releases),
    }
    if logs is not None:
        share, taken = unseen_share(releases.load_current(), logs)
        out["staleness"] = {"logs": logs.name, "new_events": taken, "unseen_share": share}
    return out


def _last_refresh(releases: Releases) -> dict[str, Any] | None:
    try:
        return json.loads((releases.root / LAST_REFRESH).read_text())
    except (OSError, ValueError):
        return None


def prune(releases: Releases, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest releases, never the current one, its parent or the
    release a rollback would go back to; returns the ids removed."""
    if keep < 1:
        raise FreshsidError(f"--keep {keep} would remove every release; keep at least 1.")
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
