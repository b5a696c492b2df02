"""The production refresh: from the release in service and the logs up to now, the next release.

1. The events since the current release are the new window, found by time against the
   record the release keeps of what it saw (:mod:`freshsid.serve.events`).
   A share of the users active in it is held out: their new events are never trained on
   and form the validation slice of the gate.
2. New SIDs from every other event, by mode:

   - ``aligned``: new collaborative embeddings and tokenizer, aligned to the current
     release's SidTable (:func:`freshsid.recode.aligned`, the step the experiment and
     rolling run); items first seen since the release get codes. A recipe that
     continues the legacy SASRec or tokenizer continues the SID build the release
     carries (the unaligned build its table came from), and the candidate carries the
     refreshed build in turn.
   - ``incremental`` (a frozen vocabulary): the release's SIDs unchanged, and the items
     first seen since coded by the served SIDs' tokenizer as it is
     (:func:`freshsid.recode.incremental`). After an aligned refresh the served table
     keeps the refreshed tokenizer with its codebooks relabelled as the codes were
     (:func:`freshsid.sid.align.align`), and that one codes them; a table an older
     version aligned has none, and is refused.

   A refresh that continues the build keeps its SASRec's shape and its tokenizer's kind
   (the weights and state fit no other); the preset and the recipe give the schedules.
3. The current checkpoint is fine-tuned on the new window over the new SIDs.
4. The gate: both releases scored on the held-out users (history before the new window,
   labels their items in it). The candidate is written as a new release with both
   scores, its parent the release it was trained from; it is promoted when asked and not
   worse than the current one by more than ``tolerance`` (relative), and only if that
   release is still current: if an operator promoted or rolled back meanwhile, the
   candidate stays unpromoted and the outcome is "superseded".

A refresh leaves "running" in ``last-refresh.json`` while it works; one that is killed
reads "interrupted" from then on (:func:`freshsid.serve.ops.last_refresh`), and the next
refresh records it and removes its scratch folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from freshsid import recode
from freshsid.api import GenerativeRetriever
from freshsid.artifacts import output_lock
from freshsid.config import ExperimentConfig
from freshsid.data.interactions import Interactions
from freshsid.data.temporal import Examples, TemporalSplit, Window
from freshsid.errors import FreshsidError
from freshsid.metrics import recall_ndcg
from freshsid.recipes import Recipe
from freshsid.recode import CollabSids, Recoded
from freshsid.retriever import pipeline
from freshsid.retriever.pipeline import Recommender
from freshsid.serve import journal
from freshsid.serve.ops import (
    REFRESH_LOCK,
    WORK,
    clean_scratch,
    events_since,
    last_refresh,
    record_refresh,
    share_uncoded,
)
from freshsid.serve.release import RETRIEVER, Release, Releases, Superseded
from freshsid.sid.table import SidTable

NEW, ALL = Window(start=1, stop=2), Window(start=0, stop=2)
Mode = Literal["aligned", "incremental"]
SASREC_SHAPE = ("dim", "n_layers", "n_heads", "ffn_dim", "max_length")  # what a fitted SASRec's weights fix


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh did: the candidate release, the gate's scores, what changed, what it cost."""

    release_id: str
    mode: Mode
    passes: bool  # the candidate is not worse than the current release by more than the tolerance
    promoted: bool
    superseded_by: str | None  # the release an operator made current while the refresh trained (then not promoted)
    metric: str
    current_score: float
    candidate_score: float
    new_events: int  # taken: after the release's last second, or in it but unseen by the release
    late_events: int  # refused as new: dated before the release's last second, never seen by it; kept as history
    signal: float  # share of the new events on items the release in service cannot code
    validation_users: int
    codes_kept: list[float]  # per level, share of common items keeping their code (all, in incremental mode)
    items_added: int
    compute: dict[str, float]


@dataclass(frozen=True)
class NotDue:
    """``refresh --if-due`` found the current release fresh enough: nothing was trained."""

    release_id: str
    signal: float  # share of the events since the release on items it cannot code
    threshold: float
    new_events: int


def refresh(releases: Releases, logs: Interactions, config: ExperimentConfig, *, mode: Mode = "aligned",
            holdout: float = 0.1, metric: str = "recall@100", tolerance: float = 0.01, promote: bool = False,
            if_due: float | None = None, progress: bool = True) -> RefreshOutcome | NotDue:
    """One production refresh of the current release of ``releases`` on ``logs`` (the logs
    up to now, extending the ones the release was built from), in ``mode`` (see the module
    docstring). With ``if_due``, only when the share of the new events on items the
    release cannot code reaches it.

    Holds the releases root's refresh lock from before any work: a second refresh is
    refused at once. The outcome is left in ``last-refresh.json`` and logged as one line
    (:func:`freshsid.serve.ops.record_refresh`), a failure included."""
    busy = f"Another refresh of {releases.root} is running; wait for it to finish."
    with output_lock(releases.root / REFRESH_LOCK, busy=busy):
        # we hold the lock: no scratch is in use, and a refresh left "running" was killed
        last, stale = last_refresh(releases), clean_scratch(releases)
        if last is not None and last.get("outcome") == "running":
            record_refresh(releases, "interrupted", started=last.get("time"), pid=last.get("pid"), scratch_removed=stale)
        record_refresh(releases, "running", pid=os.getpid())
        try:
            outcome = _refresh(releases, logs, config, mode=mode, holdout=holdout, metric=metric, tolerance=tolerance,
                               promote=promote, if_due=if_due, progress=progress)
        except FreshsidError as exc:
            record_refresh(releases, "failed", reason=str(exc))
            raise
        except BaseException as exc:  # a bug or Ctrl-C: said as such, never left "running"
            record_refresh(releases, "failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        if isinstance(outcome, NotDue):
            record_refresh(releases, "not_due", release=outcome.release_id, signal=outcome.signal,
                           threshold=outcome.threshold, new_events=outcome.new_events)
        else:
            verdict = ("superseded" if outcome.superseded_by else "refreshed" if outcome.passes else "refused_by_gate")
            record_refresh(releases, verdict, release=outcome.release_id, mode=outcome.mode, promoted=outcome.promoted,
                           superseded_by=outcome.superseded_by, signal=outcome.signal, new_events=outcome.new_events,
                           late_events=outcome.late_events, metric=outcome.metric, current=outcome.current_score,
                           candidate=outcome.candidate_score)
        return outcome


def _refresh(releases: Releases, logs: Interactions, config: ExperimentConfig, *, mode: Mode, holdout: float,
             metric: str, tolerance: float, promote: bool, if_due: float | None,
             progress: bool) -> RefreshOutcome | NotDue:
    current = releases.load_current(build=True)
    how = config.how
    if mode == "incremental" or how.warm_embeddings or how.warm_tokenizer or how.move_share < 1:
        config = _continuing(config, current, mode, how)
    new = events_since(current, logs)
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

    sids = _recode(train, current, mode, config, progress)
    work = releases.root / WORK
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work, prefix="refresh-"))
    try:
        tuned = pipeline.finetune(releases.path(current.id) / RETRIEVER, train, sids.table, target=NEW,
                                  train_config=recode.finetune_config(current.table, sids.table, how, config.finetune),
                                  out=scratch / "model", show_progress=progress,
                                  remap=sids.plan)
        examples = TemporalSplit.at(logs, [until]).examples(NEW, max_history=current.model.config.max_history)
        examples = examples.subset(np.flatnonzero(np.isin(examples.users, held)))
        scores = {name: _score(Recommender(model, table), examples, metric, config.beam) for name, model, table in
                  (("current", current.model, current.table), ("candidate", tuned.model, sids.table))}
        candidate = GenerativeRetriever.load(scratch / "model", sids.table)
        release_id = releases.create(candidate, logs, until_event=logs.n_events,
                                     metrics={f"current {metric}": scores["current"],
                                              f"candidate {metric}": scores["candidate"]},
                                     parent=current.id, build=sids.build, refresh={"mode": mode, "recipe": how.name})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    passes = scores["candidate"] >= scores["current"] * (1 - tolerance)
    superseded_by = None
    if promote and passes:
        try:
            releases.promote(release_id, expected=current.id)  # only over the release it was trained from
        except Superseded as exc:
            superseded_by = exc.found
    sid_compute = {k: float(v) for k, v in sids.table.meta["compute"].items()}
    if promote and not passes:
        journal.record("candidate_refused", release=release_id, serving=current.id, metric=metric,
                       current=scores["current"], candidate=scores["candidate"], tolerance=tolerance)
    return RefreshOutcome(release_id, mode, passes, promote and passes and superseded_by is None, superseded_by,
                          metric, scores["current"], scores["candidate"], new.taken, new.late, signal, len(held),
                          _codes_kept(sids),
                          len(np.setdiff1d(sids.table.items, current.table.items)), {**tuned.compute, **sid_compute})


def _continuing(config: ExperimentConfig, current: Release, mode: Mode, how: Recipe) -> ExperimentConfig:
    """``config`` with the SASRec shape and the tokenizer kind of the build ``current``
    carries, which a refresh that continues its weights and tokenizer keeps. Refuses a
    release without a build and, in incremental mode, one whose SIDs are not the ones its
    build's tokenizer wrote or extended."""
    build = current.build
    if build is None:
        what = "--mode incremental" if mode == "incremental" else f"recipe {how.name!r}"
        raise FreshsidError(f"Release {current.id} carries no SID build (SASRec weights and tokenizer) for {what} to "
                            "continue; create releases with `freshsid release create --embeddings`, or refresh with "
                            "--mode aligned --recipe cold.")
    if mode == "incremental" and _coder(current) is None:
        raise FreshsidError(f"Release {current.id} serves SIDs an aligned refresh relabelled without keeping its "
                            "tokenizer (an older version made it), so no tokenizer can code new items among them; "
                            "refresh it with --mode aligned.")
    assert build.embeddings is not None  # a carried build always holds its embeddings
    shape = {name: build.embeddings.config[name] for name in SASREC_SHAPE}
    kind = build.table.meta["tokenizer"]["kind"]
    return config.model_copy(update={"sasrec": config.sasrec.model_copy(update=shape),
                                     "sid": config.sid.model_copy(update={"tokenizer": kind})})


def _recode(train: TemporalSplit, current: Release, mode: Mode, config: ExperimentConfig, progress: bool) -> Recoded:
    """The recode step on every event but the held-out users' new ones, from the served table
    and the build the release carries."""
    settings = dict(recipe=config.how, sasrec=config.sasrec, sid=config.sid, seed=config.seed, progress=progress)
    build = current.build
    if mode == "incremental":
        assert build is not None  # (_continuing refused a release without one)
        return recode.incremental(train, ALL, _coder(current), build, **settings)
    served = CollabSids(build.embeddings if build is not None else None, current.table)
    return recode.aligned(train, ALL, served, continued=build, **settings)


def _codes_kept(sids: Recoded) -> list[float]:
    """Per level, the share of the items both tables code that keep their code (all, incrementally)."""
    if not sids.aligned:
        return [1.0] * sids.table.n_levels
    return [level["kept_after"] for level in sids.table.meta["stats"]["alignment"]["levels"]]


def _coder(current: Release) -> SidTable | None:
    """The table whose tokenizer codes new items among the served SIDs: the served table
    (an aligned one keeps its tokenizer, relabelled), else the build's when it is the
    served one; None when neither can."""
    if current.table.tokenizer_state is not None:
        return current.table
    build = current.build
    return build.table if build is not None and build.table.content_hash == current.table.content_hash else None


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
