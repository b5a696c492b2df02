"""The production refresh: from the release in service and the logs up to now, the next release.

1. The events since the current release are the new window, found by time against the
   record the release keeps of what it saw (:mod:`freshsid.serve.events`).
   A share of the users active in it is held out: their new events are never trained on
   and form the validation slice of the gate.
2. New collaborative embeddings and tokenizer on every other event, aligned to the
   current release's SidTable (:func:`freshsid.sid.refresh.refresh`, the same function
   the experiment runs); items first seen since the release get codes.
3. The current checkpoint is fine-tuned on the new window over the aligned SIDs.
4. The gate: both releases scored on the held-out users (history before the new window,
   labels their items in it). The candidate is written as a new release with both
   scores; it is promoted when asked and not worse than the current one by more than
   ``tolerance`` (relative).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from freshsid.artifacts import output_lock
from freshsid.config import ExperimentConfig
from freshsid.data.interactions import Interactions
from freshsid.data.temporal import Examples, TemporalSplit, Window
from freshsid.errors import FreshsidError
from freshsid.metrics import recall_ndcg
from freshsid.retriever import pipeline
from freshsid.retriever.pipeline import Recommender
from freshsid.retriever.remap import remap_plan
from freshsid.serve import journal
from freshsid.serve.events import new_events
from freshsid.serve.ops import record_refresh, share_uncoded
from freshsid.serve.release import RETRIEVER, Releases
from freshsid.sid.refresh import CollabSids, recipe, refresh

OLD, NEW = Window(start=0, stop=1), Window(start=1, stop=2)
REFRESH_LOCK = "refresh"  # root/.refresh.lock, held for a whole refresh


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh did: the candidate release, the gate's scores, what changed, what it cost."""

    release_id: str
    passes: bool  # the candidate is not worse than the current release by more than the tolerance
    promoted: bool
    metric: str
    current_score: float
    candidate_score: float
    new_events: int  # taken: after the release's last second, or in it but unseen by the release
    late_events: int  # refused as new: dated before the release's last second, never seen by it; kept as history
    signal: float  # share of the new events on items the release in service cannot code
    validation_users: int
    codes_kept: list[float]  # per level, share of common items keeping their code after alignment
    items_added: int
    compute: dict[str, float]


@dataclass(frozen=True)
class NotDue:
    """``refresh --if-due`` found the current release fresh enough: nothing was trained."""

    release_id: str
    signal: float  # share of the events since the release on items it cannot code
    threshold: float
    new_events: int


def refresh_release(releases: Releases, logs: Interactions, config: ExperimentConfig, *, holdout: float = 0.1,
                    metric: str = "recall@100", tolerance: float = 0.01, promote: bool = False,
                    if_due: float | None = None, progress: bool = True) -> RefreshOutcome | NotDue:
    """One production refresh of the current release of ``releases`` on ``logs`` (the logs
    up to now, extending the ones the release was built from). With ``if_due``, only when
    the share of the new events on items the release cannot code reaches it.

    Holds the releases root's refresh lock from before any work: a second refresh is
    refused at once. The outcome is left in ``last-refresh.json`` and logged as one line
    (:func:`freshsid.serve.ops.record_refresh`), a failure included."""
    busy = f"Another refresh of {releases.root} is running; wait for it to finish."
    with output_lock(releases.root / REFRESH_LOCK, busy=busy):
        try:
            outcome = _refresh(releases, logs, config, holdout=holdout, metric=metric, tolerance=tolerance,
                               promote=promote, if_due=if_due, progress=progress)
        except FreshsidError as exc:
            record_refresh(releases, "failed", reason=str(exc))
            raise
        if isinstance(outcome, NotDue):
            record_refresh(releases, "not_due", release=outcome.release_id, signal=outcome.signal,
                           threshold=outcome.threshold, new_events=outcome.new_events)
        else:
            record_refresh(releases, "refreshed" if outcome.passes else "refused_by_gate", release=outcome.release_id,
                           promoted=outcome.promoted, signal=outcome.signal, new_events=outcome.new_events,
                           late_events=outcome.late_events, metric=outcome.metric, current=outcome.current_score,
                           candidate=outcome.candidate_score)
        return outcome


def _refresh(releases: Releases, logs: Interactions, config: ExperimentConfig, *, holdout: float, metric: str,
             tolerance: float, promote: bool, if_due: float | None, progress: bool) -> RefreshOutcome | NotDue:
    current = releases.load_current()
    current.table.check_item_ids(logs.item_ids, logs_name=logs.name)
    new = new_events(logs, current.manifest.info["data"], release_id=current.id)
    signal = share_uncoded(new, current.table)
    if if_due is not None and (new.taken == 0 or signal < if_due):
        return NotDue(current.id, signal, if_due, new.taken)
    logs, until = new.logs, new.start
    if new.taken == 0:
        raise FreshsidError(f"{logs.name} has no events after the ones release {current.id} has seen; "
                            "pass logs that extend them.")
    held = _held_out_users(logs, until, holdout, config.seed)
    keep = np.ones(logs.n_events, dtype=bool)
    keep[until:] = ~np.isin(logs.user[until:], held)
    train = TemporalSplit.at(replace(logs, user=logs.user[keep], item=logs.item[keep], ts=logs.ts[keep]), [until])
    torch.set_num_threads(config.threads)

    how = recipe(config.recipe)
    result = refresh(train, Window(start=0, stop=2), CollabSids(None, current.table), recipe=how, sasrec=config.sasrec,
                     sid=config.sid, seed=config.seed, methods=("hungarian",), progress=progress)
    aligned = result.aligned["hungarian"]
    work = releases.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work, prefix="refresh-"))
    try:
        tuned = pipeline.finetune(releases.path(current.id) / RETRIEVER, train, aligned, target=NEW,
                                  train_config=config.finetune, out=scratch / "model", show_progress=progress,
                                  remap=remap_plan(current.table, aligned, how.remap_levels))
        examples = TemporalSplit.at(logs, [until]).examples(NEW, max_history=current.model.config.max_history)
        examples = examples.subset(np.flatnonzero(np.isin(examples.users, held)))
        scores = {name: _score(Recommender(model, table), examples, metric, config.beam) for name, model, table in
                  (("current", current.model, current.table), ("candidate", tuned.model, aligned))}
        release_id = releases.create(tuned.model, tuned.manifest, aligned, logs, until_event=logs.n_events,
                                     metrics={f"current {metric}": scores["current"],
                                              f"candidate {metric}": scores["candidate"]})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    passes = scores["candidate"] >= scores["current"] * (1 - tolerance)
    if promote and passes:
        releases.promote(release_id)
    sid_compute = {k: float(v) for k, v in aligned.meta["compute"].items()}
    if promote and not passes:
        journal.record("candidate_refused", release=release_id, serving=current.id, metric=metric,
                       current=scores["current"], candidate=scores["candidate"], tolerance=tolerance)
    return RefreshOutcome(release_id, passes, promote and passes, metric, scores["current"], scores["candidate"],
                          new.taken, new.late, signal, len(held),
                          [lv["kept_after"] for lv in aligned.meta["stats"]["alignment"]["levels"]],
                          len(np.setdiff1d(aligned.items, current.table.items)), {**tuned.compute, **sid_compute})


def _held_out_users(logs: Interactions, until: int, share: float, seed: int) -> np.ndarray:
    """A seeded share of the users active since ``until`` who also have earlier events."""
    active = np.unique(logs.user[until:])
    returning = active[np.isin(active, logs.user[:until])]
    n = int(round(share * len(returning)))
    if n == 0:
        raise FreshsidError(f"Too few returning users since the release ({len(returning)}) to hold out a validation "
                            "slice; wait for more logs or raise --holdout.")
    return np.sort(np.random.default_rng(seed).choice(returning, n, replace=False))


def _score(recommender: Recommender, examples: Examples, metric: str, beam: int) -> float:
    """``metric`` of a release on the held-out users' examples (history before the new
    window, labels in it), decoding over every item its table codes."""
    k = int(metric.split("@")[1])
    ranked, _ = recommender(examples.inputs, examples.users, top_k=k, beam=max(k, beam))
    return recall_ndcg(ranked, examples.label_indptr, examples.label_items, (k,))[metric]
