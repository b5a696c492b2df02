"""The experiment runner: every policy of :mod:`freshsid.policies` on one dataset.

The runner builds what the policy rows ask for, sharing stages where rows share
them: one legacy build on base (SASRec embeddings + the legacy SidTable), one
aligned recode on base+gap (:func:`freshsid.recode.aligned`: the refreshed table, its
aligned versions and the remap plan), one incremental recode on base+gap
(:func:`freshsid.recode.incremental`: the legacy table extended), one model
per distinct :class:`ModelSpec` (and fine-tuning seed). Stages are cached
(:class:`StageCache`), so a rerun resumes where a run stopped. Every checkpoint
records the windows it trained on and the table it used; every evaluation records
the model folder and the items it decoded over, and writes each test user's scores
beside its metrics, from which the report's paired intervals are computed.

It is over 400 lines because the stages share one cache and one set of keys: the SID
builds, the models, the evaluations and the compute accounting each read the others'
keys and artifacts, and split apart they would pass the runner's whole state around.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshsid import recode
from freshsid.artifacts import Manifest, environment, output_lock, read_manifest, write_json_atomic
from freshsid.config import ExperimentConfig
from freshsid.data.interactions import Interactions
from freshsid.data.stats import dataset_stats
from freshsid.data.temporal import Examples, TemporalSplit, Window, kcore_before
from freshsid.embed.collab import SASRec
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.evaluate.intervals import compare, interval_ks, read_scores, sensitivity, user_scores, write_scores
from freshsid.evaluate.popularity import most_popular
from freshsid.evaluate.report_plots import write_report
from freshsid.evaluate.stages import RunLayout, StageCache
from freshsid.evaluate.staleness import recall_by_part, sid_churn
from freshsid.policies import BASE_MODEL, FULL_MODEL, INCREMENTAL, STALE, Baseline, ModelSpec, Policy, Start, Tokenizer, policy
from freshsid.recode import CollabSids, Recoded
from freshsid.retriever import pipeline
from freshsid.retriever.model import Retriever, RetrieverConfig, load_checkpoint
from freshsid.runtime import repeatable
from freshsid.sid.align import METHODS
from freshsid.sid.table import SidTable

NO_SID_COMPUTE = {"embedding_seconds": 0.0, "embedding_flops": 0.0, "tokenizer_seconds": 0.0, "tokenizer_flops": 0.0}
UNITS = ("flops", "seconds")


class Experiment:
    """Runs the policies of ``config`` on ``logs`` into ``out`` (results.json, report.md, plots).

    ``variant`` labels a fine-tuning setting other than the preset's (see :class:`RunLayout`):
    its fine-tunes and results go beside the run's (``out/variants/<variant>/``), sharing
    the run's SIDs, Base and Full."""

    def __init__(self, logs: Interactions, config: ExperimentConfig, out: Path, *, show_progress: bool = True,
                 variant: str | None = None) -> None:
        self.config, self.protocol, self.how = config, config.protocol, config.how
        remapped = [label for label in config.policies if getattr(policy(label).model, "remap", False)]
        if remapped and not self.how.carried_levels(config.sid.n_levels):
            raise FreshsidError(f"Recipe {self.how.name!r} carries no code embeddings, so {remapped[0]!r} would be the "
                                "plain alignment; choose a remap recipe (remap-3, cold-remap) or leave the policy out.")
        self.split = TemporalSplit(logs, config.protocol.n_parts)
        if self.protocol.kcore:
            self.split = kcore_before(self.split, self.protocol.test, self.protocol.kcore)
        self.logs = self.split.logs
        self.layout = RunLayout(out, variant)
        self.out = self.layout.root
        self.progress = show_progress
        self.log: Callable[[str], None] = print
        self.cache = StageCache(self.layout, log=lambda line: self.log(line))

    # ------------------------------------------------------------ SIDs

    def legacy(self) -> CollabSids:
        """SASRec embeddings and the legacy SidTable, both on base (with the recipe's settings)."""
        # (earlier versions scored the SASRec while building, so the test users were in the key)
        return self._built_anew(self.layout.legacy, self.protocol.base, former=[self._eval_key()])

    def rebuilt(self) -> CollabSids:
        """A rebuild's SASRec embeddings and SidTable on base+gap: trained anew, as the legacy
        ones were on base, whatever the recipe (Full's SIDs and the dense SASRec)."""
        return self._built_anew(self.layout.rebuild, self.protocol.window("base+gap"))

    def _built_anew(self, stage: str, window: Window, former: list[Any] | None = None) -> CollabSids:
        cfg = self.config
        sasrec, sid = self.how.legacy_configs(cfg.sasrec, cfg.sid)

        def build(folder: Path) -> CollabSids:
            built = recode.build_collab_sids(self.split, window, sasrec=sasrec, sid=sid, seed=cfg.seed,
                                             progress=self.progress)
            built.save(folder, self.logs.fingerprint)
            return built

        key = [sasrec, sid, cfg.seed, self.logs.fingerprint, str(window), *self._split_key()]
        return self.cache.get(stage, key, build, CollabSids.load, former=former and [[*key, *former]])

    def refreshed(self) -> Recoded:
        """SIDs rebuilt on base+gap with the configured recipe, and aligned to the legacy table
        (every alignment method, for the ablation rows)."""
        cfg, window = self.config, self.protocol.window("base+gap")
        legacy, how = self.legacy(), self.how

        def build(folder: Path) -> Recoded:
            result = recode.aligned(self.split, window, legacy, recipe=how, sasrec=cfg.sasrec, sid=cfg.sid,
                                    seed=cfg.seed, methods=METHODS, progress=self.progress)
            result.save(folder, self.logs.fingerprint)
            return result

        def key(settings: Any, *evaluated: Any) -> list[Any]:
            return [cfg.sasrec, cfg.sid, cfg.seed, self.logs.fingerprint, str(window), settings, *evaluated,
                    self._fingerprint(f"{self.layout.legacy}/{CollabSids.EMBEDDINGS}"), legacy.table.content_hash,
                    *self._split_key()]

        # (earlier versions keyed it by the test users too, and before that by the whole recipe)
        return self.cache.get(self.layout.refresh, key(how.recode_settings()), build,
                              lambda folder: Recoded.load(folder, spoken=legacy.table, recipe=how))

    def incremental(self) -> SidTable:
        """The legacy table plus the items first seen in the gap, coded by the legacy tokenizer
        (:func:`freshsid.recode.incremental`)."""
        cfg, window = self.config, self.protocol.window("base+gap")
        legacy = self.legacy()

        def build(folder: Path) -> CollabSids:
            result = recode.incremental(self.split, window, legacy.table, legacy, recipe=self.how, sasrec=cfg.sasrec,
                                        sid=cfg.sid, seed=cfg.seed, progress=self.progress)
            result.build.save(folder, self.logs.fingerprint)
            return result.build

        key = [legacy.table.content_hash, self._fingerprint(f"{self.layout.legacy}/{CollabSids.EMBEDDINGS}"),
               self.how.recode_settings(), cfg.sasrec, cfg.sid, cfg.seed, str(window), *self._split_key()]
        return self.cache.get(self.layout.coded(self.how.incremental), key, build, CollabSids.load).table

    def table(self, tokenizer: Tokenizer) -> SidTable:
        if tokenizer is Tokenizer.LEGACY:
            return self.legacy().table
        if tokenizer is Tokenizer.LEGACY_NEW:
            return self.incremental()
        if tokenizer is Tokenizer.REBUILT:
            return self.rebuilt().table
        refreshed = self.refreshed()
        return refreshed.build.table if tokenizer.alignment is None else refreshed.aligned[tokenizer.alignment]

    # ------------------------------------------------------------ models

    def model(self, spec: ModelSpec, seed: int = 0) -> tuple[Retriever, Manifest]:
        """The retriever a spec defines: fit from scratch on its window, or a checkpoint (Base's
        or Full's) fine-tuned with the loss on its window (once per fine-tuning ``seed``)."""
        cfg = self.config
        table, window = self.table(spec.tokenizer), self.protocol.window(spec.train)
        torch.set_num_threads(cfg.threads)
        remap = None
        if spec.start is Start.SCRATCH:
            train_config = cfg.fit

            def build(folder: Path) -> tuple[Retriever, Manifest]:
                result = pipeline.fit(self.split, table, window=window, out=folder, show_progress=self.progress,
                                      model_config=RetrieverConfig.preset(cfg.retriever, codebook_sizes=table.codebook_sizes,
                                                                          max_history=self.protocol.max_history),
                                      train_config=train_config, recent_parts=cfg.recent_parts, recent_config=cfg.finetune)
                return result.model, result.manifest

            parent = None
        else:
            start = _parent(spec)
            tuned = recode.finetune_config(self.table(start.tokenizer), table, self.how, cfg.finetune)
            train_config = tuned.model_copy(update={"seed": tuned.seed + seed})
            self.model(start)
            parent = self.layout.model(start)
            if spec.remap:
                remap = self.refreshed().plan

            def build(folder: Path) -> tuple[Retriever, Manifest]:
                result = pipeline.finetune(self.layout.path(parent), self.split, table, target=window, out=folder,
                                           train_config=train_config, show_progress=self.progress, remap=remap)
                return result.model, result.manifest

        key = [table.content_hash, cfg.retriever, self.protocol.max_history, train_config, str(window),
               parent and self._fingerprint(parent)]
        if remap:  # (appended only when set: the keys of runs without it stay as they were)
            key.append(remap.key())
        if spec.start is Start.SCRATCH and cfg.recent_parts:  # (likewise)
            key.append(["recent", cfg.recent_parts, cfg.finetune])
        key += self._split_key()
        return self.cache.get(self.layout.model(spec, seed), key, build,
                              lambda folder: load_checkpoint(folder, expected_shape=table.codebook_sizes))

    def _fingerprint(self, stage: str) -> str:
        """Content fingerprint of a built artifact (its manifest's), for the keys of the stages
        that read it: a rebuilt input invalidates them even under the same config."""
        return read_manifest(self.layout.path(stage), verify=False).fingerprint

    def _eval_key(self) -> list[Any]:
        cfg = self.config
        return [str(self.protocol.test), self.protocol.max_history, cfg.ks, cfg.max_eval_users]

    def _split_key(self) -> list[Any]:
        """What the stage keys add when the parts are not the plain equal-count ones (cuts
        moved to whole days, a k-core filter); empty otherwise, so the keys of such runs stay
        as they were."""
        return [] if self.split.equal_count else [["bounds", self.split.bounds.tolist()]]

    # ------------------------------------------------------------ policies

    def examples(self) -> Examples:
        """The test users every policy is scored on (all of them, or the configured sample)."""
        if not hasattr(self, "_examples"):
            self._examples = pipeline.sample_users(
                self.split.examples(self.protocol.test, max_history=self.protocol.max_history), self.config.max_eval_users)
        return self._examples

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
                "models": [r["model"] for r in records], "per_user": [p for r in records for p in r["per_user"]],
                "eval_seconds": sum(r["eval_seconds"] for r in records)}

    def _evaluate_seed(self, row: Policy, seed: int) -> dict[str, Any]:
        cfg = self.config
        allowed = self.protocol.window(row.allowed)
        stage = self.layout.evaluation(row, seed)
        record = {"kind": str(row.compute), "allowed": str(allowed), "description": self.describe(row),
                  "compute": self.compute(row.model, seed), "per_user": [str(self.layout.users(stage).relative_to(self.out))]}
        if isinstance(row.model, Baseline):
            window = self.protocol.window(row.model.train)
            record["definition"] = {"baseline": row.model.kind, "train": row.model.train, "allowed": row.allowed}
            if row.model.kind == "mostpop":
                ranking, counts = most_popular(self.split, window, allowed, max(cfg.ks))
                record["ranking"] = {"items": ranking.tolist(), "counts": counts.tolist(), "window": str(window)}
                rank = lambda ex: np.tile(ranking, (len(ex), 1))  # noqa: E731
                key = [self.logs.fingerprint, str(window), str(allowed), *self._split_key()]
            else:
                stage_of = self.layout.rebuild if row.model.train == "base+gap" else self.layout.legacy
                embeddings = lambda: self.sasrec_embeddings(row.model.train)  # noqa: E731
                rank = lambda ex: SASRec.restore(embeddings(), self.logs.n_items).recommend(  # noqa: E731
                    ex.inputs, max(cfg.ks), allowed_items=self.split.allowed_items(allowed))
                embeddings()
                key = [self._fingerprint(f"{stage_of}/{CollabSids.EMBEDDINGS}"), str(allowed)]
        else:
            model, manifest = self.model(row.model, seed)
            table = self.table(row.model.tokenizer)
            record |= {"model": self.layout.model(row.model, seed), "sid_table": table.content_hash,
                       "definition": {"tokenizer": str(row.model.tokenizer), "start": str(row.model.start),
                                      "train": row.model.train, "allowed": row.allowed, "remap": row.model.remap}}
            rank = lambda ex: pipeline.rank_test_users(model, table, self.split, test=self.protocol.test,  # noqa: E731
                                                       allowed=allowed, top_k=max(cfg.ks), beam=cfg.beam,
                                                       max_users=cfg.max_eval_users)[1]
            key = [table.content_hash, manifest.fingerprint, str(allowed), cfg.beam]
        return self._scored(stage, key + [self._eval_key(), "per-user", *self._split_key()], rank, record)

    def _scored(self, stage: str, key: list[Any], rank: Callable[[Examples], np.ndarray], record: dict) -> dict:
        """The evaluation stage ``stage``: the test users ranked by ``rank``, scored user by user
        (``<stage>.users.parquet``) and on average (``<stage>.json``, with ``record``)."""
        cfg, users = self.config, self.layout.users(stage)

        def build(folder: Path) -> dict[str, Any]:
            examples = self.examples()
            started = time.perf_counter()
            ranked = rank(examples)
            seconds = time.perf_counter() - started
            frame = user_scores(ranked, examples, ks=cfg.ks, base_items=self.split.allowed_items(self.protocol.base),
                                new_items=self.split.new_items(self.protocol.gap))
            write_scores(users, frame)
            metrics = {f"{m}@{k}": float(np.mean(frame[f"{m}@{k}"].to_numpy())) for k in cfg.ks for m in ("recall", "ndcg")}
            out = {**record, "metrics": metrics, "users": len(examples), "eval_seconds": seconds}
            write_json_atomic(folder.with_suffix(".json"), out)
            return out

        def load(folder: Path) -> dict[str, Any]:
            if not users.exists():
                raise FileNotFoundError(users)
            return json.loads(folder.with_suffix(".json").read_text())

        return self.cache.get(stage, key, build, load)

    def sasrec_embeddings(self, window: str) -> Embeddings:
        return (self.rebuilt() if window == "base+gap" else self.legacy()).embeddings

    def describe(self, row: Policy) -> str:
        """The row's description, with what this run's recipe made of it: how refreshed SIDs
        were built (cold, or continued from the legacy models) and what a remap carried."""
        how = self.how
        text = row.description
        refreshed = isinstance(row.model, ModelSpec) and row.model.tokenizer not in (Tokenizer.LEGACY, Tokenizer.REBUILT)
        if isinstance(row.model, ModelSpec):
            if row.model.remap:
                levels = how.carried_levels(self.config.sid.n_levels)
                text += f" (code embeddings of the first {levels} level(s) carried)"
        if refreshed:
            continued = [name for name, on in (("SASRec", how.warm_embeddings), ("tokenizer", how.warm_tokenizer)) if on]
            built = (f"continued from the legacy {' and '.join(continued)}" if continued
                     else "built cold (a new SASRec and tokenizer on base+gap)")
            text += f"; refreshed SASRec/SIDs {built}, recipe {how.name}"
        return text

    # ------------------------------------------------------------ compute

    def compute(self, model: ModelSpec | Baseline, seed: int = 0) -> dict[str, float]:
        """A model's training compute three ways (FLOPs and seconds each): ``retriever_*``
        (retriever training only), ``all_in_*`` (plus the SID building it needs beyond its
        starting checkpoint's: ``embedding_*`` and ``tokenizer_*``), ``cumulative_*`` (plus
        everything the checkpoint it starts from cost, and the legacy build a warm recipe's
        refresh continues from)."""
        how = self.how
        warm = how.warm_embeddings or how.warm_tokenizer
        legacy = lambda: _sids(self.legacy().table)  # noqa: E731
        if isinstance(model, Baseline):
            retriever, sids, before = _zero("retriever"), dict(NO_SID_COMPUTE), _zero("")
            if model.kind == "sasrec":
                sids.update(embedding_flops=float(self.sasrec_embeddings(model.train).compute.get("flops", 0.0)),
                            embedding_seconds=float(self.sasrec_embeddings(model.train).compute.get("seconds", 0.0)))
        else:
            _, manifest = self.model(model, seed)
            retriever = {k: float(v) for k, v in manifest.compute.items() if k.startswith("retriever")}
            table = self.table(model.tokenizer)
            if model.start is Start.SCRATCH:
                sids = _sids(table)
                before = {f"_{u}": legacy()[f"embedding_{u}"] + legacy()[f"tokenizer_{u}"] for u in UNITS} \
                    if warm and model.tokenizer not in (Tokenizer.LEGACY, Tokenizer.REBUILT) else _zero("")
            else:
                start = _parent(model)
                # SID compute is charged to a fine-tune whose table is not its starting model's.
                same = self.table(start.tokenizer).content_hash == table.content_hash
                sids = dict(NO_SID_COMPUTE) if same else _sids(table)
                parent = self.compute(start)
                before = {f"_{u}": parent[f"cumulative_{u}"] for u in UNITS}
        out = {**retriever, **sids}
        for unit in UNITS:
            out[f"all_in_{unit}"] = (retriever.get(f"retriever_{unit}", 0.0) + sids[f"embedding_{unit}"]
                                     + sids[f"tokenizer_{unit}"])
            out[f"cumulative_{unit}"] = out[f"all_in_{unit}"] + before[f"_{unit}"]
        return out

    # ------------------------------------------------------------ comparisons

    def comparisons(self, policies: dict[str, Any]) -> tuple[dict, dict]:
        """Paired bootstrap intervals of every policy against FT-old and FT-old+new, and the
        sensitivity table, at the headline cutoffs."""
        frames = read_scores(self.out, policies)
        ks = interval_ks(self.config.ks)
        return (compare([frames], (STALE.label, INCREMENTAL.label), ks, seed=self.config.seed),
                {label: sensitivity(frame, ks) for label, frame in frames.items()})

    def staleness(self) -> dict[str, Any]:
        """SID churn per level (legacy vs refreshed) and Base's decay on each part after
        the window its manifest says it trained on, up to the end of the test window."""
        cfg = self.config
        legacy, refreshed = self.legacy().table, self.refreshed().build.table
        model, manifest = self.model(BASE_MODEL)
        trained = pipeline.trained_span(manifest)

        def build(_: Path) -> dict[str, Any]:
            return {"churn": sid_churn(legacy, refreshed), "trained_on": str(trained),
                    "by_part": recall_by_part(model, legacy, self.split, trained_on=trained, until=self.protocol.test.stop,
                                              ks=cfg.ks, beam=cfg.beam, max_users=cfg.max_eval_users,
                                              known=self._base_on_test(trained))}

        key = [legacy.content_hash, refreshed.content_hash, manifest.fingerprint, self._eval_key(), cfg.beam,
               *self._split_key()]
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
        policies = {row.label: self.evaluate(row) for row in rows}
        intervals, sensitivity_table = self.comparisons(policies)
        results = {
            "dataset": {"name": self.logs.name, **dataset_stats(self.logs, n_parts=self.protocol.n_parts)},
            "config": self.config.model_dump(mode="json"),
            "policies": policies,
            "intervals": intervals,
            "sensitivity": sensitivity_table,
            "alignment": {m: t.meta["stats"]["alignment"] for m, t in self.refreshed().aligned.items()},
            "staleness": self.staleness(),
            "wall_seconds": time.perf_counter() - started,
            "stage_seconds": dict(self.cache.seconds),  # each stage's last build, this run's or an earlier one's
            "environment": environment(),
        }
        folder = self.out if self.layout.variant is None else self.out / "variants" / self.layout.variant
        write_json_atomic(folder / "results.json", results)
        write_report(results, folder)
        return results


def _parent(spec: ModelSpec) -> ModelSpec:
    """The checkpoint a fine-tune starts from."""
    return {Start.BASE: BASE_MODEL, Start.FULL: FULL_MODEL}[spec.start]


def _sids(table: SidTable) -> dict[str, float]:
    return {k: float(table.meta.get("compute", {}).get(k, 0.0)) for k in NO_SID_COMPUTE}


def _zero(prefix: str) -> dict[str, float]:
    return {f"{prefix}_{u}": 0.0 for u in UNITS}
