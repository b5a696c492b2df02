"""The experiment runner: every policy of :mod:`freshsid.policies` on one dataset.

The runner builds what the policy rows ask for, sharing stages where rows share
them: one legacy build on base (SASRec embeddings + the legacy SidTable), one
refresh on base+gap (:func:`freshsid.sid.refresh.refresh`: the refreshed table and
its aligned versions), one model per distinct :class:`ModelSpec` (and fine-tuning
seed). Stages are cached (:class:`StageCache`), so a rerun resumes where a run stopped.
Every checkpoint records the windows it trained on and the table it used; every
evaluation records the model folder and the items it decoded over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshsid.artifacts import Manifest, environment, output_lock, read_manifest, write_json_atomic
from freshsid.config import ExperimentConfig
from freshsid.data.interactions import Interactions
from freshsid.data.stats import dataset_stats
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.policies import BASE_MODEL, ModelSpec, Policy, Start, Tokenizer, policy
from freshsid.evaluate.report import write_report
from freshsid.evaluate.stages import RunLayout, StageCache
from freshsid.evaluate.staleness import recall_by_part, sid_churn
from freshsid.metrics import recall_ndcg
from freshsid.retriever import pipeline
from freshsid.retriever.model import Retriever, RetrieverConfig, load_checkpoint
from freshsid.retriever.remap import remap_plan
from freshsid.runtime import repeatable
from freshsid.sid.refresh import CollabSids, Refresh, build_collab_sids, recipe, refresh
from freshsid.sid.table import SidTable

NO_SID_COMPUTE = {"embedding_seconds": 0.0, "embedding_flops": 0.0, "tokenizer_seconds": 0.0, "tokenizer_flops": 0.0}


class Experiment:
    """Runs the policies of ``config`` on ``logs`` into ``out`` (results.json, report.md, plots).

    ``variant`` labels a fine-tuning setting other than the preset's (see :class:`RunLayout`):
    its fine-tunes and results go beside the run's (``out/variants/<variant>/``), sharing
    the run's SIDs, Base and Full."""

    def __init__(self, logs: Interactions, config: ExperimentConfig, out: Path, *, show_progress: bool = True,
                 variant: str | None = None) -> None:
        self.logs, self.config, self.protocol = logs, config, config.protocol
        self.split = TemporalSplit(logs, config.protocol.n_parts)
        self.layout = RunLayout(out, variant)
        self.out = self.layout.root
        self.progress = show_progress
        self.log: Callable[[str], None] = print
        self.cache = StageCache(self.layout, log=lambda line: self.log(line))

    # ------------------------------------------------------------ SIDs

    def legacy(self) -> CollabSids:
        """SASRec embeddings and the legacy SidTable, both on base (with the recipe's settings)."""
        cfg, base = self.config, self.protocol.base
        sasrec, sid = recipe(cfg.recipe).legacy_configs(cfg.sasrec, cfg.sid)

        def build(folder: Path) -> CollabSids:
            built = build_collab_sids(self.split, base, sasrec=sasrec, sid=sid, seed=cfg.seed, progress=self.progress)
            self._score_sasrec(built, base)
            built.save(folder, self.logs.fingerprint)
            return built

        key = [sasrec, sid, cfg.seed, self.logs.fingerprint, str(base), self._eval_key()]
        return self.cache.get(self.layout.legacy, key, build, CollabSids.load)

    def refreshed(self) -> Refresh:
        """SIDs rebuilt on base+gap with the configured recipe, and aligned to the legacy table."""
        cfg, window = self.config, self.protocol.window("base+gap")
        legacy, how = self.legacy(), recipe(cfg.recipe)

        def build(folder: Path) -> Refresh:
            result = refresh(self.split, window, legacy, recipe=how, sasrec=cfg.sasrec, sid=cfg.sid, seed=cfg.seed,
                             progress=self.progress)
            self._score_sasrec(result.refreshed, window)
            result.save(folder, self.logs.fingerprint)
            return result

        def key(settings: Any) -> list[Any]:
            return [cfg.sasrec, cfg.sid, cfg.seed, self.logs.fingerprint, str(window), settings, self._eval_key(),
                    self._fingerprint(f"{self.layout.legacy}/{CollabSids.EMBEDDINGS}"), legacy.table.content_hash]

        # (runs made before recipes that differ only in remap shared a refresh keyed it by the whole recipe)
        return self.cache.get(self.layout.refresh, key(how.refresh_settings()), build,
                              lambda folder: Refresh.load(folder, how.name), former=key(how))

    def table(self, tokenizer: Tokenizer) -> SidTable:
        if tokenizer is Tokenizer.LEGACY:
            return self.legacy().table
        refreshed = self.refreshed()
        return refreshed.refreshed.table if tokenizer.alignment is None else refreshed.aligned[tokenizer.alignment]

    def _score_sasrec(self, built: CollabSids, window: Window) -> None:
        """The SASRec behind the embeddings is also the report's dense baseline: score it
        while it is in memory, on the test users every policy is scored on."""
        cfg = self.config
        ex = pipeline.sample_users(self.split.examples(self.protocol.test, max_history=self.protocol.max_history),
                                   cfg.max_eval_users)
        ranked = built.sasrec.recommend(ex.inputs, max(cfg.ks), allowed_items=self.split.allowed_items(window))
        write_json_atomic(self.layout.path(self.layout.sasrec(f"{window.start}-{window.stop}")).with_suffix(".json"),
                          {"metrics": recall_ndcg(ranked, ex.label_indptr, ex.label_items, cfg.ks),
                           "compute": built.embeddings.compute, "allowed": str(window)})

    # ------------------------------------------------------------ models

    def model(self, spec: ModelSpec, seed: int = 0) -> tuple[Retriever, Manifest]:
        """The retriever a spec defines: fit from scratch on its window, or Base fine-tuned
        with the loss on its window (once per fine-tuning ``seed``)."""
        cfg = self.config
        table, window = self.table(spec.tokenizer), self.protocol.window(spec.train)
        torch.set_num_threads(cfg.threads)
        remap = None
        if spec.start is Start.SCRATCH:
            train_config = cfg.fit

            def build(folder: Path) -> tuple[Retriever, Manifest]:
                result = pipeline.fit(self.split, table, window=window, out=folder, show_progress=self.progress,
                                      model_config=RetrieverConfig.preset(cfg.retriever, codebook_sizes=table.codebook_sizes,
                                                                          max_history=self.protocol.max_history), train_config=train_config)
                return result.model, result.manifest

            parent = None
        else:
            train_config = cfg.finetune.model_copy(update={"seed": cfg.finetune.seed + seed})
            self.model(BASE_MODEL)
            parent = self.layout.model(BASE_MODEL)

            remap = remap_plan(self.table(Tokenizer.LEGACY), table, recipe(cfg.recipe).remap_levels)

            def build(folder: Path) -> tuple[Retriever, Manifest]:
                result = pipeline.finetune(self.layout.path(parent), self.split, table, target=window, out=folder,
                                           train_config=train_config, show_progress=self.progress, remap=remap)
                return result.model, result.manifest

        key = [table.content_hash, cfg.retriever, self.protocol.max_history, train_config, str(window),
               parent and self._fingerprint(parent)]
        if remap:  # (appended only when set: the keys of runs without it stay as they were)
            key.append(["remap", remap[0].content_hash, remap[1]])
        return self.cache.get(self.layout.model(spec, seed), key, build,
                              lambda folder: load_checkpoint(folder, expected_shape=table.codebook_sizes))

    def _fingerprint(self, stage: str) -> str:
        """Content fingerprint of a built artifact (its manifest's), for the keys of the stages
        that read it: a rebuilt input invalidates them even under the same config."""
        return read_manifest(self.layout.path(stage), verify=False).fingerprint

    def _eval_key(self) -> list[Any]:
        cfg = self.config
        return [str(self.protocol.test), self.protocol.max_history, cfg.ks, cfg.max_eval_users]

    # ------------------------------------------------------------ policies

    def evaluate(self, row: Policy) -> dict[str, Any]:
        """Test-window metrics and compute of a policy; a fine-tuned policy's metrics are
        the mean over ``finetune_seeds``, each seed's kept under ``by_seed``."""
        seeds = self.config.finetune_seeds if row.finetuned else (0,)
        records = [self._evaluate_seed(row, seed) for seed in seeds]
        if len(records) == 1:
            return records[0]
        keys = records[0]["metrics"].keys()
        mean = {k: float(np.mean([r["metrics"][k] for r in records])) for k in keys}
        return {**records[0], "metrics": mean, "seeds": list(seeds), "by_seed": [r["metrics"] for r in records],
                "models": [r["model"] for r in records], "eval_seconds": sum(r["eval_seconds"] for r in records)}

    def _evaluate_seed(self, row: Policy, seed: int) -> dict[str, Any]:
        cfg = self.config
        model, manifest = self.model(row.model, seed)
        table, allowed = self.table(row.model.tokenizer), self.protocol.window(row.allowed)
        # SID compute is charged to a policy whose table is not the one its starting model had.
        reuses_legacy = row.finetuned and row.model.tokenizer is Tokenizer.LEGACY
        sid_compute = NO_SID_COMPUTE if reuses_legacy else {k: float(table.meta["compute"].get(k, 0.0)) for k in NO_SID_COMPUTE}

        def build(_: Path) -> dict[str, Any]:
            started = time.perf_counter()
            metrics = pipeline.evaluate(model, table, self.split, test=self.protocol.test, allowed=allowed, ks=cfg.ks,
                                        beam=cfg.beam, max_users=cfg.max_eval_users)
            retriever = {k: float(v) for k, v in manifest.compute.items() if k.startswith("retriever")}
            return {"metrics": metrics, "compute": {**retriever, **sid_compute}, "kind": str(row.compute),
                    "allowed": str(allowed), "model": self.layout.model(row.model, seed), "sid_table": table.content_hash,
                    "eval_seconds": time.perf_counter() - started, "description": row.description,
                    "definition": {"tokenizer": str(row.model.tokenizer), "start": str(row.model.start),
                                   "train": row.model.train, "allowed": row.allowed}}

        key = [table.content_hash, manifest.fingerprint, str(allowed), cfg.beam, self._eval_key()]
        return self.cache.record(self.layout.evaluation(row, seed), build, key)

    def sasrec_baselines(self) -> dict[str, Any]:
        """The dense SASRec models behind the collaborative embeddings, scored on the test
        window when their embeddings were built."""
        self.refreshed()
        out = {}
        for name, window in (("SASRec (base)", self.protocol.base), ("SASRec (base+gap)", self.protocol.window("base+gap"))):
            path = self.layout.path(self.layout.sasrec(f"{window.start}-{window.stop}")).with_suffix(".json")
            out[name] = json.loads(path.read_text())
        return out

    def staleness(self) -> dict[str, Any]:
        """SID churn per level (legacy vs refreshed) and Base's decay on each part after
        the window its manifest says it trained on, up to the end of the test window."""
        cfg = self.config
        legacy, refreshed = self.legacy().table, self.refreshed().refreshed.table
        model, manifest = self.model(BASE_MODEL)
        trained = pipeline.trained_span(manifest)

        def build(_: Path) -> dict[str, Any]:
            return {"churn": sid_churn(legacy, refreshed), "trained_on": str(trained),
                    "by_part": recall_by_part(model, legacy, self.split, trained_on=trained, until=self.protocol.test.stop,
                                              ks=cfg.ks, beam=cfg.beam, max_users=cfg.max_eval_users,
                                              known=self._base_on_test(trained))}

        key = [legacy.content_hash, refreshed.content_hash, manifest.fingerprint, self._eval_key(), cfg.beam]
        return self.cache.record(self.layout.staleness, build, key)

    def _base_on_test(self, trained: Window) -> dict[int, dict[str, float]]:
        """Base's test-part metrics when the policy table already decodes them exactly as the
        decay curve would (one test part, decoding over Base's training window)."""
        test, base = self.protocol.test, policy("Base")
        if base.label not in self.config.policies or test.stop - test.start != 1 or \
                self.protocol.window(base.allowed) != trained:
            return {}
        return {test.start: self.evaluate(base)["metrics"]}

    def run(self) -> dict[str, Any]:
        with output_lock(self.out):  # one writer per run folder
            return self._run()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        torch.set_num_threads(self.config.threads)  # every stage, SIDs too: results depend on it
        repeatable()
        rows = [policy(label) for label in self.config.policies]
        results = {
            "dataset": {"name": self.logs.name, **dataset_stats(self.logs, n_parts=self.protocol.n_parts)},
            "config": self.config.model_dump(mode="json"),
            "policies": {row.label: self.evaluate(row) for row in rows},
            "alignment": {m: t.meta["stats"]["alignment"] for m, t in self.refreshed().aligned.items()},
            "baselines": self.sasrec_baselines(),
            "staleness": self.staleness(),
            "wall_seconds": time.perf_counter() - started,
            "stage_seconds": dict(self.cache.seconds),  # each stage's last build, this run's or an earlier one's
            "environment": environment(),
        }
        folder = self.out if self.layout.variant is None else self.out / "variants" / self.layout.variant
        write_json_atomic(folder / "results.json", results)
        write_report(results, folder)
        return results
