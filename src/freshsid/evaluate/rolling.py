"""The rolling protocol: refresh after refresh, and a trigger that decides when to refresh.

The logs are cut into N equal-count parts. One initial build on [0, s) (SASRec
embeddings, the SidTable, a retriever) is the common start; then at each round
r = s ... N-2 every strategy may use the events of part r and is scored on part r+1:

- **Frozen** never changes;
- **FT-old** fine-tunes its retriever on part r with the initial SIDs;
- **Incremental** keeps every SID it serves and codes the items new in part r with the
  initial tokenizer, frozen (what a team with a fixed vocabulary does): their vectors are
  placed in the space that tokenizer reads (:func:`freshsid.recode.incremental`: folded
  into its SASRec by default); then it fine-tunes on part r;
- **Aligned** refreshes the SIDs on [0, r+1), aligns them to the table it serves
  (each round's table is the next one's legacy, so items new since the last round
  get codes and become recommendable) and fine-tunes on part r;
- **Full** rebuilds embeddings, SIDs and retriever from scratch on [0, r+1);
- **Triggered** refreshes like Aligned when a staleness signal reaches a threshold;
  below it, it codes part r's new items into the SIDs it serves and fine-tunes (like
  Incremental, with the tokenizer of its last refresh, relabelled by the alignment) when
  part r has events on items it does not code, and does nothing when it has none. The
  threshold is the mean signal over the first rounds where the signal is defined (during
  which it refreshes every round); it is stated in the results;
- **MostPop** trains nothing: items ranked by their count in part r (any item seen in
  [0, r+1) may be returned), the reference line every strategy should clear.

Every evaluation keeps its per-user scores (``<stage>.users.parquet``); each round, and
the mean over rounds, compares every strategy with Incremental, FT-old and Full (those
that ran), paired over the round's test users (:func:`freshsid.evaluate.intervals.compare`).

Staleness signals, from what is known at round r (never from part r+1): ``churn``,
the mean per-level share of codes a refreshed tokenizer would change after alignment;
``unseen``, the share of part r's events on items the served table does not code;
``decay``, the relative drop of the served retriever's Recall@K_max on part r from its
Recall@K_max on part r-1 (the last part it trained on, so the ratio carries an in-sample
advantage the threshold, set on the first rounds, takes in).

A strategy's state is named by the actions that led to it from the initial build
(``F`` fine-tune, ``I`` code new items and fine-tune, ``R`` refresh and fine-tune), so
strategies that took the same actions share their stages: Triggered reuses Aligned's while both refresh. Stages
are cached (:class:`StageCache`), so an interrupted run resumes.

It is over 400 lines because each strategy's round is a few lines of the same state
(what it serves, its build, its checkpoint); the trigger and its signals live here for
the same reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from freshsid import recode
from freshsid.artifacts import output_lock, read_manifest, write_json_atomic
from freshsid.data.interactions import Interactions
from freshsid.data.temporal import Examples, TemporalSplit, Window
from freshsid.errors import FreshsidError
from freshsid.evaluate.intervals import compare, interval_ks, user_scores, write_scores
from freshsid.evaluate.popularity import most_popular
from freshsid.evaluate.rolling_config import RollingConfig
from freshsid.evaluate.rolling_report import write_report
from freshsid.evaluate.stages import RunLayout, StageCache
from freshsid.recode import CollabSids, Recoded
from freshsid.retriever import pipeline
from freshsid.retriever.model import RetrieverConfig, load_checkpoint
from freshsid.retriever.remap import RemapPlan
from freshsid.runtime import repeatable
from freshsid.sid.table import SidTable

REFERENCES = ("Incremental", "FT-old", "Full", "MostPop")  # the paired intervals: every strategy minus each of these
SID_COMPUTE = ("embedding_flops", "embedding_seconds", "tokenizer_flops", "tokenizer_seconds")
COMPUTE = ("retriever_flops", "retriever_seconds", *SID_COMPUTE)
TRIGGER_ACTIONS = {"R": "refresh", "I": "incremental", "": "nothing"}  # what Triggered did in a round, by step letter


def sid_compute(table: SidTable) -> dict[str, float]:
    return {k: float(table.meta["compute"].get(k, 0.0)) for k in SID_COMPUTE}


@dataclass(frozen=True)
class State:
    """What a strategy serves after a round.

    ``path``: the actions since the initial build ("" for the initial build itself);
    ``sids``: the served table with the embeddings it was coded from; ``build``: the
    unaligned build a warm recipe continues and whose SASRec incremental coding continues
    (its table holds the tokenizer state, as the served table does: relabelled after an
    aligned refresh, the initial tokenizer's for Incremental);
    ``model``: the checkpoint's stage; ``coverage``: the window whose items are coded."""

    path: str
    sids: CollabSids
    build: CollabSids
    model: str
    coverage: Window
    refreshed_at: int  # the round of the last refresh (the initial build counts as one)


class Rolling:
    """Runs the strategies of ``config`` over the rounds of the rolling protocol into ``out``."""

    def __init__(self, logs: Interactions, config: RollingConfig, out: Path, *, show_progress: bool = True) -> None:
        self.logs, self.config, self.run_config, self.how = logs, config, config.run, config.run.how
        self.split = TemporalSplit(logs, config.n_parts)
        self.layout = RunLayout(out)
        self.out = self.layout.root
        self.progress = show_progress
        self.log: Callable[[str], None] = print
        self.cache = StageCache(self.layout, log=lambda line: self.log(line))

    # ------------------------------------------------------------ builds

    def _build(self, stage: str, window: Window) -> CollabSids:
        """SIDs built afresh on ``window`` (the recipe's legacy build)."""
        cfg = self.run_config
        sasrec, sid = self.how.legacy_configs(cfg.sasrec, cfg.sid)

        def build(folder: Path) -> CollabSids:
            built = recode.build_collab_sids(self.split, window, sasrec=sasrec, sid=sid, seed=cfg.seed,
                                             progress=self.progress)
            built.save(folder, self.logs.fingerprint)
            return built

        key = [sasrec, sid, cfg.seed, self.logs.fingerprint, str(window), self.config.n_parts]
        return self.cache.get(stage, key, build, CollabSids.load)

    def _recode(self, stage: str, state: State, window: Window, mode: str) -> Recoded:
        """The recode step on ``window`` from what ``state`` serves: ``aligned``
        (:func:`freshsid.recode.aligned`) or ``incremental`` (:func:`freshsid.recode.incremental`)."""
        cfg, how = self.run_config, self.how
        settings = dict(sasrec=cfg.sasrec, sid=cfg.sid, seed=cfg.seed, recipe=how, progress=self.progress)

        def build(folder: Path) -> Recoded:
            if mode == "aligned":
                result = recode.aligned(self.split, window, state.sids, continued=state.build, **settings)
            else:
                result = recode.incremental(self.split, window, state.sids.table, state.build, **settings)
            result.save(folder, self.logs.fingerprint)
            return result

        key = [mode, cfg.sasrec, cfg.sid, cfg.seed, self.logs.fingerprint, str(window), how.recode_settings(),
               state.sids.table.content_hash, state.build.table.content_hash, self.config.n_parts]
        return self.cache.get(stage, key, build, lambda folder: Recoded.load(folder, spoken=state.sids.table, recipe=how))

    def _fit(self, stage: str, table: SidTable, window: Window) -> None:
        cfg = self.run_config

        def build(folder: Path) -> str:
            pipeline.fit(self.split, table, window=window, out=folder, show_progress=self.progress,
                         model_config=RetrieverConfig.preset(cfg.retriever, codebook_sizes=table.codebook_sizes,
                                                             max_history=cfg.protocol.max_history),
                         train_config=cfg.fit, recent_parts=cfg.recent_parts, recent_config=cfg.finetune)
            return stage

        key = [table.content_hash, cfg.retriever, cfg.protocol.max_history, cfg.fit, str(window)]
        if cfg.recent_parts:  # (appended only when set: the keys of runs without it stay as they were)
            key.append(["recent", cfg.recent_parts, cfg.finetune])
        self.cache.get(stage, key, build, _checked)

    def _finetune(self, stage: str, parent: str, spoken: SidTable, table: SidTable, target: Window,
                  remap: RemapPlan | None) -> None:
        """Fine-tune ``parent`` (which speaks ``spoken``) on ``table``, carrying ``remap`` over
        first (the step's plan)."""
        train_config = recode.finetune_config(spoken, table, self.how, self.run_config.finetune)

        def build(folder: Path) -> str:
            pipeline.finetune(self.layout.path(parent), self.split, table, target=target, out=folder,
                              train_config=train_config, show_progress=self.progress, remap=remap)
            return stage

        key = [table.content_hash, train_config, str(target), read_manifest(self.layout.path(parent), verify=False).fingerprint]
        if remap:  # (appended only when set: the keys of runs without it stay as they were)
            key.append(remap.key())
        self.cache.get(stage, key, build, _checked)

    def initial(self) -> State:
        """Embeddings, SIDs and retriever on [0, initial): where every strategy starts."""
        window = Window(start=0, stop=self.config.initial)
        sids = self._build("initial/sids", window)
        self._fit("initial/model", sids.table, window)
        return State("", sids, sids, "initial/model", window, self.config.initial - 1)

    def step(self, state: State, action: str, r: int) -> State:
        """``state`` after one action at round r: ``F`` fine-tunes on part r with the served
        table, ``I`` codes part r's new items into it and fine-tunes, ``R`` refreshes the
        SIDs on [0, r+1), aligns them and fine-tunes on part r."""
        path, part = state.path + action, Window(start=r, stop=r + 1)
        if action == "F":
            self._finetune(f"steps/{path}/model", state.model, state.sids.table, state.sids.table, part, None)
            return State(path, state.sids, state.build, f"steps/{path}/model", state.coverage, state.refreshed_at)
        window = Window(start=0, stop=r + 1)
        result = self._recode(f"steps/{path}/sids", state, window, "incremental" if action == "I" else "aligned")
        self._finetune(f"steps/{path}/model", state.model, state.sids.table, result.table, part, result.plan)
        return State(path, result.sids, result.build, f"steps/{path}/model", window,
                     state.refreshed_at if action == "I" else r)

    def full(self, r: int) -> State:
        window = Window(start=0, stop=r + 1)
        sids = self._build(f"full/r{r}/sids", window)
        self._fit(f"full/r{r}/model", sids.table, window)
        return State(f"X{r}", sids, sids, f"full/r{r}/model", window, r)

    # ------------------------------------------------------------ scoring

    def evaluate(self, state: State, part: int) -> dict[str, float]:
        """``state``'s retriever on ``part``, decoding over the items its table codes."""
        cfg = self.run_config

        def rank(examples: Examples) -> np.ndarray:
            model, _ = load_checkpoint(self.layout.path(state.model), expected_shape=state.sids.table.codebook_sizes)
            return pipeline.recommend(model, state.sids.table, examples.inputs, examples.users, top_k=max(cfg.ks),
                                      allowed_items=self.split.allowed_items(state.coverage), beam=cfg.beam)[0]

        key = [state.sids.table.content_hash, read_manifest(self.layout.path(state.model), verify=False).fingerprint,
               str(state.coverage)]
        return self._scored(self.eval_stage(state.path, part), part, rank, key)

    @staticmethod
    def eval_stage(path: str, part: int) -> str:
        """Where the evaluation of the state reached by ``path`` on ``part`` is kept."""
        return f"eval/{'full' if path.startswith('X') else path or 'initial'}/part{part}"

    def popular(self, r: int) -> dict[str, float]:
        """MostPop at round r: the items seen in [0, r+1), most counted in part r first, on part r+1."""
        seen = Window(start=0, stop=r + 1)
        ranking, _ = most_popular(self.split, Window(start=r, stop=r + 1), seen, max(self.run_config.ks))
        return self._scored(self.eval_stage("mostpop", r + 1), r + 1, lambda ex: np.tile(ranking, (len(ex), 1)),
                            ["mostpop", str(seen)])

    def _scored(self, stage: str, part: int, rank: Callable[[Examples], np.ndarray], key: list[Any]) -> dict[str, float]:
        """The metrics of ``rank`` on the test users of ``part``, with their per-user scores
        (``<stage>.users.parquet``; "new" items: those first seen in the part before)."""
        cfg = self.run_config

        def build(_: Path) -> dict[str, Any]:
            examples = pipeline.sample_users(
                self.split.examples(Window(start=part, stop=part + 1), max_history=cfg.protocol.max_history),
                cfg.max_eval_users)
            if len(examples) == 0:
                raise FreshsidError(f"No user has an event in part {part} and an earlier one; cut the logs into fewer parts.")
            frame = user_scores(rank(examples), examples, ks=cfg.ks,
                                base_items=self.split.allowed_items(Window(start=0, stop=part - 1)),
                                new_items=self.split.new_items(Window(start=part - 1, stop=part)))
            write_scores(self.layout.users(stage), frame)
            return {f"{m}@{k}": float(np.mean(frame[f"{m}@{k}"].to_numpy())) for k in cfg.ks for m in ("recall", "ndcg")}

        return self.cache.record(stage, build, [*key, part, cfg.ks, cfg.beam, cfg.max_eval_users, cfg.protocol.max_history,
                                                "per-user"])

    def intervals(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Every strategy minus each reference present, paired over users: for one round,
        or for the mean over several (the rounds are fixed strata; users are resampled
        within each)."""
        rounds = [{name: pl.read_parquet(self.layout.users(self.eval_stage(entry["path"], record["scored_on"])))
                   for name, entry in record["strategies"].items()} for record in records]
        return compare(rounds, [r for r in REFERENCES if r in rounds[0]], interval_ks(self.run_config.ks),
                       seed=self.run_config.seed, resample_builds=False)

    def compute(self, before: State, after: State) -> dict[str, float]:
        """What the round's action cost: the retriever's training, and the SIDs (embedding
        model and tokenizer) when they were rebuilt or extended."""
        out = dict.fromkeys(COMPUTE, 0.0)
        if after.model != before.model:
            trained = read_manifest(self.layout.path(after.model), verify=False).compute
            out.update({k: float(trained.get(k, 0.0)) for k in ("retriever_flops", "retriever_seconds")})
        if after.sids is not before.sids:  # SIDs rebuilt or extended (new embeddings at least)
            out.update(sid_compute(after.sids.table))
        return out

    # ------------------------------------------------------------ signals

    def signals(self, state: State, r: int, k: int) -> dict[str, Any]:
        """The staleness signals of ``state`` at round r, from parts up to r only."""
        part = self.split.events(Window(start=r, stop=r + 1))
        unseen = float(np.mean(~np.isin(self.logs.item[part], state.sids.table.items)))
        # the served retriever on the newest part against the part before (both known now)
        newest, before = (self.evaluate(state, p)[f"recall@{k}"] for p in (r, r - 1))
        decay = 1.0 - newest / before if before > 0 else None
        churn, cost = None, dict.fromkeys(SID_COMPUTE, 0.0)
        if self.config.signal == "churn":  # a refreshed tokenizer is built to measure it: its cost is the signal's
            candidate = self._recode(f"steps/{state.path}R/sids", state, Window(start=0, stop=r + 1), "aligned")
            levels = candidate.table.meta["stats"]["alignment"]["levels"]
            churn = float(np.mean([1.0 - lv["kept_after"] for lv in levels]))
            cost = sid_compute(candidate.table)
        return {"churn": churn, "unseen": unseen, "decay": decay, "cost": cost}

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        with output_lock(self.out):
            return self._run()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        torch.set_num_threads(self.run_config.threads)
        repeatable()
        cfg, k = self.config, max(self.run_config.ks)
        first = self.initial()
        states = {name: first for name in cfg.strategies}
        scores: dict[str, list[dict[str, Any]]] = {name: [] for name in cfg.strategies}
        calibration: list[float] = []
        threshold = None
        rounds = []
        for r in cfg.rounds:
            record: dict[str, Any] = {"round": r, "uses_part": r, "scored_on": r + 1, "strategies": {}}
            for name in cfg.strategies:
                before = states[name]
                if name in ("Frozen", "MostPop"):
                    after = before
                elif name == "FT-old":
                    after = self.step(before, "F", r)
                elif name == "Incremental":
                    after = self.step(before, "I", r)
                elif name == "Aligned":
                    after = self.step(before, "R", r)
                elif name == "Full":
                    after = self.full(r)
                else:  # Triggered
                    signal = self.signals(before, r, k)
                    value = signal[cfg.signal]
                    calibrating = threshold is None
                    if calibrating and value is not None:  # a round without the signal does not calibrate
                        calibration.append(value)
                        if len(calibration) == cfg.calibration_rounds:
                            threshold = float(np.mean(calibration))
                    refresh_now = calibrating or value is None or value >= threshold
                    action = "R" if refresh_now else "I" if signal["unseen"] > 0 else ""
                    after = self.step(before, action, r) if action else before
                    cost = signal.pop("cost")
                    record["signals"] = {**signal, "used": cfg.signal, "threshold": None if calibrating else threshold,
                                         "refreshed": refresh_now, "action": TRIGGER_ACTIONS[action],
                                         "calibrating": calibrating}
                states[name] = after
                compute = self.compute(before, after)
                if name == "Triggered" and not refresh_now:
                    compute.update(cost)  # the refreshed tokenizer built only to measure churn
                if name == "MostPop":
                    entry = {"metrics": self.popular(r), "compute": compute, "path": "mostpop"}
                else:
                    entry = {"metrics": self.evaluate(after, r + 1), "compute": compute,
                             "path": after.path, **self.codes(first, before, after)}
                scores[name].append(entry)
                record["strategies"][name] = entry
            record["intervals"] = self.intervals([record])
            rounds.append(record)
        results = {"dataset": {"name": self.logs.name, "n_parts": cfg.n_parts},
                   "config": cfg.model_dump(mode="json"), "rounds": rounds,
                   "trigger": {"signal": cfg.signal, "calibration_rounds": cfg.calibration_rounds,
                               "calibration_values": calibration, "threshold": threshold},
                   "summary": summarize(scores, k), "over_rounds": self.intervals(rounds),
                   "wall_seconds": time.perf_counter() - started,
                   "stage_seconds": dict(self.cache.seconds)}  # each stage's last build, this run's or an earlier one's
        write_json_atomic(self.out / "results.json", results)
        write_report(results, self.out)
        return results

    def codes(self, first: State, before: State, after: State) -> dict[str, Any]:
        """How the served table moved: codes kept per level (against the round before and
        against the initial table, on the items both code), utilisation per level, items
        added, and duplicate SIDs (always 0 for a valid table)."""
        table = after.sids.table
        return {"kept": kept(before.sids.table, table), "kept_since_start": kept(first.sids.table, table),
                "utilisation": [len(np.unique(table.codes[:, level])) / size
                                for level, size in enumerate(table.codebook_sizes[:-1])],
                "items": len(table), "items_added": len(table) - len(before.sids.table),
                "duplicate_sids": len(table) - len(np.unique(table.codes, axis=0))}


def _checked(folder: Path) -> str:
    """A cached checkpoint's stage, once its manifest verifies (a damaged one is rebuilt)."""
    read_manifest(folder)
    return folder.name


def kept(old: SidTable, new: SidTable) -> list[float]:
    """Per prefix level, the share of the items both tables code whose code is the same."""
    _, a, b = np.intersect1d(old.items, new.items, return_indices=True)
    same = old.codes[a, :-1] == new.codes[b, :-1]
    return [float(x) for x in same.mean(axis=0)] if len(a) else [0.0] * old.n_levels


def summarize(scores: dict[str, list[dict[str, Any]]], k: int) -> dict[str, Any]:
    """Per strategy: mean Recall@k over the rounds, the cumulative compute (all-in and the
    retriever's alone) and, when Full ran, how many times less of each than Full; which
    strategy is best on quality and which on quality gained over Frozen per FLOP."""
    rows = {}
    for name, entries in scores.items():
        flops = sum(e["compute"][f"{part}_flops"] for e in entries for part in ("retriever", "embedding", "tokenizer"))
        rows[name] = {f"mean_recall@{k}": float(np.mean([e["metrics"][f"recall@{k}"] for e in entries])),
                      "flops": float(flops),
                      "retriever_flops": float(sum(e["compute"]["retriever_flops"] for e in entries)),
                      "seconds": float(sum(e["compute"][f"{part}_seconds"] for e in entries
                                           for part in ("retriever", "embedding", "tokenizer")))}
    if "Full" in rows:
        full = rows["Full"]
        for row in rows.values():
            row["less_than_full"] = {key: full[key] / row[key] if row[key] > 0 else None
                                     for key in ("retriever_flops", "flops")}
    metric = f"mean_recall@{k}"
    best = max(rows, key=lambda n: rows[n][metric])
    per_flop = None
    if "Frozen" in rows:
        frozen = rows["Frozen"][metric]
        for row in rows.values():
            row["gain_per_pflop"] = (row[metric] - frozen) / (row["flops"] / 1e15) if row["flops"] > 0 else None
        spent = [n for n in rows if rows[n]["gain_per_pflop"] is not None]
        per_flop = max(spent, key=lambda n: rows[n]["gain_per_pflop"]) if spent else None
    return {"k": k, "strategies": rows, "best_quality": best, "best_per_flop": per_flop}

