"""Release bundles: "this checkpoint, with these SIDs, over this catalog, is what we serve".

A release is an artifact folder holding two artifacts of its own, the retriever
checkpoint (``retriever/``) and its SidTable (``sids/``), beside the catalog of the
items the table codes (``catalog.parquet``: dense item, original id, title, the time of
the item's first event) and every
user's latest items (``histories.parquet``: dense user, original id, items). It may
also carry the SID build its table continues (``build/``, a
:class:`~freshsid.recode.CollabSids`: the collaborative embeddings with their
SASRec's weights and the table their tokenizer wrote, with its state), which a refresh
that continues the SASRec or the tokenizer needs; a release without one serves alike.
Its manifest records the release id, the parent release, the data the model was
trained on (logs fingerprint, parts), the training recipe, how a refresh made it,
validation metrics, compute, and the fingerprints of the inner artifacts, so a bundle
whose files do not match is refused on load.

A releases root holds the bundles under ``releases/<id>/`` and a pointer file,
``CURRENT.json`` (the current id and the ids promoted before it, :class:`Pointer`),
replaced atomically: promoting or rolling back is one rename. Every change of the
pointer is a compare-and-swap under the pointer's lock: it names the release it expects
to replace, so that a refresh trained from a release an operator has since rolled back
is not promoted over the rollback (:class:`Superseded`). A target is checked (its files
against its manifest) before the pointer moves. Ids are numbered (r0001, ..., r10000:
ordered by number, not as strings) and a new one is created exclusively.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from freshsid.artifacts import (
    Manifest,
    artifact_dir,
    finish_manifest,
    output_lock,
    read_manifest,
    reading,
    write_json_atomic,
)
from freshsid.data.interactions import Interactions
from freshsid.data.temporal import last_items
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.recode import CollabSids
from freshsid.retriever.model import Retriever, load_checkpoint, save_checkpoint
from freshsid.serve import journal
from freshsid.serve.events import seen_record
from freshsid.sid.table import SidTable

if TYPE_CHECKING:
    from freshsid.api import GenerativeRetriever

KIND = "release"
RETRIEVER, SIDS, CATALOG, HISTORIES = "retriever", "sids", "catalog.parquet", "histories.parquet"
BUILD = "build"
BUILD_EMBEDDINGS, BUILD_TABLE = f"{BUILD}/{CollabSids.EMBEDDINGS}", f"{BUILD}/{CollabSids.TABLE}"  # manifest inputs
POINTER = "CURRENT.json"
RELEASE_ID = re.compile(r"^r[0-9]{4,}$")
ReleaseId = Annotated[str, StringConstraints(strict=True, pattern=RELEASE_ID.pattern)]


class Pointer(BaseModel):
    """``CURRENT.json``: the release in service and the ones promoted before it, oldest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    current: ReleaseId | None
    previous: list[ReleaseId]


class Superseded(FreshsidError):
    """The pointer no longer names the release a change expected to replace."""

    def __init__(self, expected: str | None, found: str | None) -> None:
        super().__init__(f"The current release is {found}, not {expected} as expected (an operator promoted or rolled "
                         "back meanwhile); nothing was changed.")
        self.expected, self.found = expected, found


@dataclass(frozen=True)
class Release:
    """A loaded release: the model, its table, the catalog (dense item -> id, title), the
    users' latest items (dense user, id, items), and the SID build it carries when loaded
    with ``build=True`` (None when it carries none)."""

    id: str
    model: Retriever
    table: SidTable
    catalog: pl.DataFrame
    histories: pl.DataFrame
    manifest: Manifest
    build: CollabSids | None = None


def write_release(folder: Path, model: Retriever, checkpoint: Manifest, table: SidTable, logs: Interactions, *,
                  release_id: str, parent: str | None, until_event: int, metrics: dict[str, float] | None = None,
                  build: CollabSids | None = None, refresh: dict[str, str] | None = None) -> Manifest:
    """Write one release bundle to ``folder``; ``until_event``: how many of the logs' events
    (in time order) the model has seen — recorded by time (:func:`~freshsid.serve.events.seen_record`),
    so that a refresh finds the ones after in any later logs. ``build``: the SID build
    ``table`` continues, carried for the next refresh; ``refresh``: how a refresh made the
    release (mode, recipe), recorded."""
    items = table.items
    first_seen = np.full(logs.n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, logs.item, logs.ts)
    catalog = pl.DataFrame({"item": items, "item_id": table.item_ids.astype(str),
                            "title": logs.items["title"].gather(items.tolist()) if len(items) else [],
                            "first_seen": first_seen[items]}, schema_overrides={"first_seen": pl.Int64})
    users = np.arange(logs.n_users)
    latest = last_items(logs.user, logs.item, users, model.config.max_history)
    histories = pl.DataFrame({"user": users, "user_id": logs.user_ids.astype(str),
                              "items": [row[row >= 0] for row in latest]})
    with artifact_dir(folder) as tmp:
        histories.write_parquet(tmp / HISTORIES, statistics=False)
        inner = save_checkpoint(tmp / RETRIEVER, model, extra_meta=dict(checkpoint.info), inputs=dict(checkpoint.inputs),
                                compute=dict(checkpoint.compute), parent=checkpoint.parent, seed=checkpoint.seed)
        table.save(tmp / SIDS)
        carried: dict[str, str] = {}
        if build is not None:
            build.save(tmp / BUILD, logs.fingerprint)
            carried = {BUILD_EMBEDDINGS: read_manifest(tmp / BUILD_EMBEDDINGS, verify=False).fingerprint,
                       BUILD_TABLE: build.table.content_hash}
        catalog.write_parquet(tmp / CATALOG, statistics=False)
        info = {
            "release_id": release_id,
            "parent_release": parent,
            "data": {"logs": logs.fingerprint, "name": logs.name, "until_event": int(until_event),
                     **seen_record(logs, until_event),
                     "history_window": checkpoint.info.get("history_window"),
                     "target_window": checkpoint.info.get("target_window")},
            "recipe": {"mode": checkpoint.info.get("mode"), "train": checkpoint.info.get("train"),
                       "tokenizer": table.meta.get("tokenizer", {}), "sid_parent": table.meta.get("parent")},
            "refresh": refresh,
            "metrics": metrics or {},
            "n_items": len(table),
        }
        compute = {**dict(checkpoint.compute), **{k: float(v) for k, v in table.meta.get("compute", {}).items()}}
        return finish_manifest(tmp, kind=KIND, config={"codebook_sizes": list(table.codebook_sizes)}, info=info,
                               inputs={RETRIEVER: inner.fingerprint, SIDS: table.content_hash, **carried},
                               compute=compute)


def load_release(folder: Path, *, build: bool = False) -> Release:
    """A release bundle, every part checked against the release manifest. ``build``: also
    load (and check) the SID build it carries, which a refresh continues and serving
    does not need."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND, require=(CATALOG, HISTORIES))
    model, inner = load_checkpoint(folder / RETRIEVER)
    table = SidTable.load(folder / SIDS)
    if inner.fingerprint != manifest.inputs.get(RETRIEVER) or table.content_hash != manifest.inputs.get(SIDS):
        raise FreshsidError(f"{folder} holds a checkpoint or SID table other than its manifest records; rebuild the release.")
    if tuple(model.config.codebook_sizes) != tuple(table.codebook_sizes):
        raise FreshsidError(f"{folder} pairs a checkpoint and a SID table of different shapes; rebuild the release.")
    with reading(folder / CATALOG):
        catalog = pl.read_parquet(folder / CATALOG)
    if (catalog.columns[:3] != ["item", "item_id", "title"] or catalog.columns[3:] not in ([], ["first_seen"])
            or catalog["item"].to_list() != table.items.tolist()):
        raise FreshsidError(f"{folder / CATALOG} does not list the items of the release's SID table; rebuild the release.")
    with reading(folder / HISTORIES):
        histories = pl.read_parquet(folder / HISTORIES)
    if histories.columns != ["user", "user_id", "items"]:
        raise FreshsidError(f"{folder / HISTORIES} has columns {histories.columns}; rebuild the release.")
    loaded = _load_build(folder, manifest) if build and BUILD_EMBEDDINGS in manifest.inputs else None
    return Release(str(manifest.info.get("release_id")), model, table, catalog, histories, manifest, loaded)


def _load_build(folder: Path, manifest: Manifest) -> CollabSids:
    build = CollabSids.load(folder / BUILD)
    embeddings = read_manifest(folder / BUILD_EMBEDDINGS, verify=False).fingerprint  # (its files checked on load)
    if embeddings != manifest.inputs[BUILD_EMBEDDINGS] or build.table.content_hash != manifest.inputs.get(BUILD_TABLE):
        raise FreshsidError(f"{folder / BUILD} holds embeddings or a SID table other than the release's manifest "
                            "records; rebuild the release.")
    return build


def carried_build(embeddings: Path, table: SidTable) -> CollabSids:
    """The SID build a first release carries: the collaborative embeddings at ``embeddings``
    (``freshsid embed collab``, SASRec weights included) and ``table``, which a tokenizer
    coded from them (its state kept)."""
    if table.tokenizer_state is None:
        raise FreshsidError("The --sids table holds no tokenizer state (an older version built or aligned it), so a "
                            "release cannot carry it as its build; pass the table `freshsid sids build` wrote, or drop "
                            "--embeddings.")
    loaded = Embeddings.load(embeddings)
    if loaded.kind != "collab" or loaded.state is None:
        raise FreshsidError(f"{embeddings} holds no SASRec weights to continue (content embeddings, or an older "
                            "build); pass a folder `freshsid embed collab` wrote.")
    coded_from = table.meta.get("inputs", {}).get("embeddings")
    if coded_from is not None and coded_from != read_manifest(embeddings, verify=False).fingerprint:
        raise FreshsidError(f"The --sids table was coded from other embeddings than {embeddings}; pass the folder its "
                            "`freshsid sids build --embeddings` read.")
    return CollabSids(loaded, table)


class Releases:
    """A releases root: bundles under ``releases/`` and the pointer to the current one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, release_id: str) -> Path:
        if not isinstance(release_id, str) or not RELEASE_ID.match(release_id):
            raise FreshsidError(f"{release_id!r} is not a release id (r0001, r0002, ...); see `freshsid release list`.")
        return self.root / "releases" / release_id

    def ids(self) -> list[str]:
        """The release ids, oldest (lowest number) first."""
        folder = self.root / "releases"
        found = [p.name for p in folder.iterdir() if RELEASE_ID.match(p.name)] if folder.is_dir() else []
        return sorted(found, key=lambda i: int(i[1:]))

    def pointer(self) -> dict[str, Any]:
        """``{"current": id or None, "previous": [ids promoted before it, oldest first]}``; a
        pointer that is not a :class:`Pointer` is refused."""
        path = self.root / POINTER
        try:
            return Pointer.model_validate_json(path.read_bytes()).model_dump()
        except FileNotFoundError:
            return {"current": None, "previous": []}
        except (OSError, ValidationError):
            raise FreshsidError(f"{path} is not a release pointer ({{\"current\": \"r0001\", \"previous\": []}}); restore "
                                "it or promote a release again.") from None

    @property
    def current(self) -> str | None:
        return self.pointer()["current"]

    def create(self, retriever: GenerativeRetriever, logs: Interactions, *, until_event: int,
               parent: str | None = None, metrics: dict[str, float] | None = None, build: CollabSids | None = None,
               refresh: dict[str, str] | None = None) -> str:
        """Write a new release of a fitted ``retriever`` (its checkpoint and the table it
        speaks) over ``logs``, whose first ``until_event`` events it has seen; not promoted.
        Its parent: ``parent`` (the release the checkpoint came from), by default the
        current one. The id is one past the highest, reserved by an exclusive mkdir: an
        existing release is never written over."""
        model, checkpoint, table = retriever.model_, retriever.manifest_, retriever.table_
        if model is None or checkpoint is None or table is None:
            raise FreshsidError("This GenerativeRetriever is not fitted yet; call fit() (or load()) first.")
        with output_lock(self.root / "releases"):
            existing = self.ids()
            release_id = f"r{int(existing[-1][1:]) + 1 if existing else 1:04d}"
            folder = self.path(release_id)
            folder.mkdir(parents=True, exist_ok=False)  # FileExistsError is a bug: ids() saw every release
            try:
                write_release(folder, model, checkpoint, table, logs, release_id=release_id,
                              parent=self.current if parent is None else parent, until_event=until_event,
                              metrics=metrics, build=build, refresh=refresh)
            except BaseException:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only the empty reservation; a written release is never removed here
                raise
        return release_id

    def check(self, release_id: str) -> None:
        """Refuse a release that is not there or does not load (its files against its manifest)."""
        if not self.path(release_id).is_dir():
            raise FreshsidError(f"{self.root} has no release {release_id}; see `freshsid release list {self.root}`.")
        load_release(self.path(release_id), build=True)

    def promote(self, release_id: str, *, expected: str | None = None) -> None:
        """Make ``release_id`` current (after checking its bundle loads). ``expected``: the
        release the caller expects to replace; if another is current, :class:`Superseded`
        is raised and nothing changes. Promoting the current release changes nothing."""
        self.check(release_id)  # a broken bundle is refused here, before the pointer moves
        with output_lock(self.root / POINTER):
            pointer = self.pointer()
            if expected is not None and pointer["current"] != expected:
                raise Superseded(expected, pointer["current"])
            if pointer["current"] == release_id:
                return
            previous = pointer["previous"] + ([pointer["current"]] if pointer["current"] else [])
            write_json_atomic(self.root / POINTER, {"current": release_id, "previous": previous})
        journal.record("promote", root=str(self.root), release=release_id, previous=pointer["current"])

    def rollback(self) -> str:
        """Make the release promoted before the current one current again (after checking
        its bundle loads); returns its id."""
        seen = self.pointer()
        if not seen["previous"]:  # refused before taking the lock, which would touch the root
            raise FreshsidError(f"{self.root} has no earlier release to roll back to.")
        *previous, back = seen["previous"]
        self.check(back)
        with output_lock(self.root / POINTER):
            now = self.pointer()
            if now != seen:
                raise Superseded(seen["current"], now["current"])
            write_json_atomic(self.root / POINTER, {"current": back, "previous": previous})
        journal.record("rollback", root=str(self.root), release=back, previous=seen["current"])
        return back

    def load_current(self, *, build: bool = False) -> Release:
        current = self.current
        if current is None:
            raise FreshsidError(f"{self.root} has no current release; promote one with `freshsid release promote`.")
        return load_release(self.path(current), build=build)
