"""The experiment runner: every policy of DESIGN.md on one dataset, side by side.

Stages are shared where policies share them (one legacy tokenizer and base
model, one refreshed tokenizer) and cached: each stage's artifact is recorded in
``stages.json`` with the fingerprint of everything it depends on, so a rerun
skips what is already built and resumes where a run stopped.

Policies (all evaluated on the test window with the same metrics):

- Base: legacy SIDs (tokenizer on base), retriever trained on base.
- FT-old: Base's checkpoint fine-tuned on gap with the stale legacy SIDs.
- FT-new: tokenizer refit on base+gap, unaligned; Base's checkpoint fine-tuned on gap.
- FT-aligned (greedy | hungarian): the refit tokenizer aligned to the legacy vocabulary.
- FT-aligned+new: FT-aligned (hungarian)'s model, also allowed the items first seen in gap.
- Full: tokenizer and retriever rebuilt from scratch on base+gap.

Decoding allows the items of base for Base, FT-old, FT-new and FT-aligned, and
the items of base+gap for FT-aligned+new and Full.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from freshsid.artifacts import fingerprint_of, read_manifest, write_json_atomic
from freshsid.data.interactions import Interactions
from freshsid.data.stats import dataset_stats
from freshsid.data.temporal import ProtocolConfig, TemporalSplit, Window
from freshsid.embed.collab import SASRecConfig, collab_embeddings
from freshsid.embed.store import load_embeddings, load_model_state
from freshsid.errors import FreshsidError
from freshsid.evaluate.metrics import DEFAULT_KS, recall_ndcg
from freshsid.evaluate.report import write_report
from freshsid.evaluate.staleness import recall_by_part, sid_churn
from freshsid.retriever import pipeline
from freshsid.retriever.model import RetrieverConfig, load_checkpoint
from freshsid.retriever.train import TrainConfig
from freshsid.sid.align import align
from freshsid.sid.build import SidConfig, build_table
from freshsid.sid.table import SidTable

POLICIES = ("Base", "FT-old", "FT-new", "FT-aligned (greedy)", "FT-aligned (hungarian)", "FT-aligned+new", "Full")


class ExperimentConfig(BaseModel):
    """Everything an experiment depends on; presets below fill it in."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    preset: Literal["tiny", "cpu", "paper"] = "cpu"
    policies: tuple[str, ...] = POLICIES
    protocol: ProtocolConfig = ProtocolConfig()
    sasrec: SASRecConfig = SASRecConfig()
    sid: SidConfig = SidConfig()
    retriever: Literal["tiny", "cpu", "paper"] = "cpu"
    fit: TrainConfig = TrainConfig()
    finetune: TrainConfig = TrainConfig(epochs=2, lr=5e-4, warmup_steps=10, patience=2)
    beam: int = 500
    ks: tuple[int, ...] = DEFAULT_KS
    max_eval_users: int | None = None
    seed: int = 0
    threads: int = 2
    # How the refreshed SIDs are made: "cold" (a new SASRec and a new tokenizer on
    # base+gap, as in the reference protocol) or "warm" (SASRec continues from the legacy
    # model's weights, the tokenizer from the legacy tokenizer for sid.warm_epochs).
    refresh: Literal["cold", "warm"] = "cold"
    # Every fine-tuned policy is trained and scored once per seed (the same seeds for all,
    # so comparisons between them are paired); its metrics are the mean over seeds.
    finetune_seeds: tuple[int, ...] = Field((0,), min_length=1)

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, policies: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
        return policies


def preset(name: str, **overrides: Any) -> ExperimentConfig:
    """The named preset, with top-level fields overridden."""
    presets: dict[str, dict[str, Any]] = {
        "tiny": dict(
            preset="tiny",
            sasrec=SASRecConfig(dim=32, max_epochs=3, patience=2, valid_users=200, max_length=20),
            sid=SidConfig(tokenizer="rqkmeans", codebook_size=16, suffix_size=64),
            retriever="tiny",
            fit=TrainConfig(epochs=2, batch_size=128, lr=3e-3, warmup_steps=5),
            finetune=TrainConfig(epochs=1, batch_size=128, lr=1e-3, warmup_steps=2),
            beam=50,
            ks=(1, 5, 10, 20, 50),
            max_eval_users=300,
        ),
        # Sized so that Beauty runs in well under an hour on 2 cores (benchmarks/RESULTS.md);
        # decoding at beam 500 dominates evaluation, hence a fixed sample of test users.
        "cpu": dict(
            preset="cpu",
            fit=TrainConfig(epochs=8, batch_size=256, lr=1e-3, patience=2),
            finetune=TrainConfig(epochs=2, batch_size=256, lr=5e-4, warmup_steps=10, patience=2),
            max_eval_users=2000,
        ),
        "paper": dict(
            preset="paper",
            sid=SidConfig(codebook_size=512, suffix_size=512),
            retriever="paper",
            threads=16,
        ),
    }
    if name not in presets:
        raise FreshsidError(f"Unknown preset {name!r}; use one of {', '.join(presets)}.")
    return ExperimentConfig(**{**presets[name], **overrides})


class Experiment:
    """Runs the policies of ``config`` on ``logs`` into ``out`` (results.json, report.md, plots)."""

    def __init__(self, logs: Interactions, config: ExperimentConfig, out: Path, *, show_progress: bool = True) -> None:
        self.logs, self.config, self.out = logs, config, Path(out)
        self.split = TemporalSplit(logs, config.protocol.n_parts)
        self.progress = show_progress
        self.out.mkdir(parents=True, exist_ok=True)
        self._stages_file = self.out / "stages.json"
        self._stages = json.loads(self._stages_file.read_text()) if self._stages_file.exists() else {}
        self.log: Callable[[str], None] = print

    # ------------------------------------------------------------ stage cache

    def _cached(self, name: str, key: Any, build: Callable[[Path], Any], load: Callable[[Path], Any]) -> Any:
        """Load stage ``name`` if it was built with ``key``, else build and record it."""
        folder = self.out / name
        key = fingerprint_of(key)
        if self._stages.get(name) == key:
            try:
                return load(folder)
            except (FreshsidError, FileNotFoundError):
                pass  # missing or damaged artifact: rebuild it
        self.log(f"[{time.strftime('%H:%M:%S')}] {name}")
        result = build(folder)
        self._stages[name] = key
        write_json_atomic(self._stages_file, self._stages)
        return result

    # ------------------------------------------------------------ stages

    def embeddings(self, window: Window) -> tuple[np.ndarray, dict[str, float]]:
        """Collaborative item embeddings from a SASRec trained on ``window`` (a warm
        refresh continues from the legacy SASRec's weights)."""
        cfg = self.config
        init = self._legacy_sasrec_state() if self._warm(window) else None

        def build(folder: Path) -> tuple[np.ndarray, dict[str, float]]:
            emb, model = collab_embeddings(self.logs, self.split.events(window), window=str(window), config=cfg.sasrec,
                                           seed=cfg.seed, progress=self.progress, init_state=init)
            # The SASRec model is also the dense baseline of the report: score it now.
            ex = pipeline.sample_users(self.split.examples(cfg.protocol.test, max_history=cfg.protocol.max_history),
                                       cfg.max_eval_users)
            ranked = model.recommend(ex.inputs, max(cfg.ks), allowed_items=self.split.allowed_items(window))
            write_json_atomic(self.out / f"eval/sasrec-{window.start}-{window.stop}.json",
                              {"metrics": recall_ndcg(ranked, ex.label_indptr, ex.label_items, cfg.ks),
                               "compute": emb.compute, "allowed": str(window)})
            emb.save(folder, self.logs.fingerprint)
            return emb.vectors, emb.compute

        def load(folder: Path) -> tuple[np.ndarray, dict[str, float]]:
            vectors, manifest = load_embeddings(folder)
            return vectors, dict(manifest.compute)

        key = [cfg.sasrec, cfg.seed, self.logs.fingerprint, str(window), cfg.protocol, cfg.ks, cfg.max_eval_users]
        key += ["warm", self._fingerprint(self._embed_stage(cfg.protocol.base))] if init is not None else []
        return self._cached(self._embed_stage(window), key, build, load)

    def sid_table(self, window: Window) -> SidTable:
        """Tokenizer fit on the embeddings of ``window``'s items (a warm refresh continues
        from the legacy tokenizer for ``sid.warm_epochs``)."""
        cfg = self.config
        vectors, embed_compute = self.embeddings(window)
        init = self.sid_table(cfg.protocol.base).tokenizer_state if self._warm(window) else None

        def build(folder: Path) -> SidTable:
            items = self.split.allowed_items(window)
            table, _ = build_table(vectors[items], items, self.logs.item_ids[items], cfg.sid, window=str(window),
                                   inputs={"logs": self.logs.fingerprint}, init_state=init)
            # Tokenizer compute includes the collaborative embeddings it needs.
            comp = table.meta["compute"]
            comp["tokenizer_seconds"] += embed_compute["seconds"]
            comp["tokenizer_flops"] += embed_compute["flops"]
            table.save(folder)
            return table

        def load(folder: Path) -> SidTable:
            table = SidTable.load(folder)
            if table.tokenizer_state is None:
                raise FreshsidError(f"{folder} lacks its tokenizer state")  # an older version's artifact: rebuild
            return table

        key = [cfg.sid, self._fingerprint(self._embed_stage(window)), str(window)]
        key += ["warm", self._fingerprint(f"sids/{cfg.protocol.base.start}-{cfg.protocol.base.stop}")] if init is not None else []
        return self._cached(f"sids/{window.start}-{window.stop}", key, build, load)

    def _fingerprint(self, stage: str) -> str:
        """Content fingerprint of a built stage's artifact (its manifest's), for the keys of
        the stages that read it: a rebuilt input invalidates them even under the same config."""
        return read_manifest(self.out / stage, verify=False).fingerprint

    def _legacy_sasrec_state(self) -> dict[str, np.ndarray]:
        """The legacy SASRec's weights; a run made before they were saved retrains it."""
        base = self.config.protocol.base
        self.embeddings(base)
        try:
            return load_model_state(self.out / self._embed_stage(base))
        except FreshsidError:
            self._stages.pop(self._embed_stage(base))
            self.embeddings(base)
            return load_model_state(self.out / self._embed_stage(base))

    def _warm(self, window: Window) -> bool:
        return self.config.refresh == "warm" and window != self.config.protocol.base

    @staticmethod
    def _embed_stage(window: Window) -> str:
        return f"embed/{window.start}-{window.stop}"

    def aligned_table(self, method: str) -> tuple[SidTable, dict]:
        legacy, refreshed = self.sid_table(self.config.protocol.base), self.sid_table(self._base_gap)

        def build(folder: Path) -> tuple[SidTable, dict]:
            table, report = align(legacy, refreshed, method=method)
            table.save(folder)
            return table, report

        def load(folder: Path) -> tuple[SidTable, dict]:
            table = SidTable.load(folder)
            return table, table.meta["stats"]["alignment"]

        return self._cached(f"sids/aligned-{method}", [legacy.content_hash, refreshed.content_hash, method], build, load)

    def model(self, name: str, table: SidTable, *, parent: str | None, seed: int = 0) -> tuple[Any, dict[str, float]]:
        """A trained retriever: from scratch when ``parent`` is None, else fine-tuned from it
        (with ``seed``; stage ``name`` for seed 0, ``name-seedN`` otherwise)."""
        cfg, protocol = self.config, self.config.protocol
        finetune = cfg.finetune.model_copy(update={"seed": cfg.finetune.seed + seed})
        name = _seeded(name, seed)
        torch.set_num_threads(cfg.threads)

        def build(folder: Path):
            if parent is None:
                window = protocol.base if name == "base" else self._base_gap
                result = pipeline.fit(self.split, table, window=window, out=folder, show_progress=self.progress,
                                      model_config=RetrieverConfig.preset(cfg.retriever, codebook_sizes=table.codebook_sizes), train_config=cfg.fit)
            else:
                result = pipeline.finetune(self.out / parent, self.split, table, target=protocol.gap, out=folder,
                                           train_config=finetune, show_progress=self.progress)
            return result.model, result.compute

        def load(folder: Path):
            model, manifest = load_checkpoint(folder, expected_shape=table.codebook_sizes)
            return model, dict(manifest.compute)

        key = [table.content_hash, cfg.retriever, cfg.fit if parent is None else finetune, parent and self._fingerprint(parent)]
        return self._cached(name, key, build, load)

    @property
    def _base_gap(self) -> Window:
        return Window(start=self.config.protocol.base.start, stop=self.config.protocol.gap.stop)

    # ------------------------------------------------------------ policies

    def _policy(self, name: str, seed: int = 0) -> tuple[Any, SidTable, Window, dict[str, float], dict[str, float], str]:
        """(model, table, allowed window, retriever compute, tokenizer compute, kind) of a
        policy; ``seed`` picks the fine-tuning run of a fine-tuned policy."""
        protocol = self.config.protocol
        legacy = self.sid_table(protocol.base)
        base_model, base_compute = self.model("models/base", legacy, parent=None)
        tok = lambda t: {k: t.meta["compute"][k] for k in ("tokenizer_seconds", "tokenizer_flops")}  # noqa: E731
        if name == "Base":
            return base_model, legacy, protocol.base, base_compute, tok(legacy), "base"
        if name == "FT-old":
            model, comp = self.model("models/ft-old", legacy, parent="models/base", seed=seed)
            return model, legacy, protocol.base, comp, {"tokenizer_seconds": 0.0, "tokenizer_flops": 0.0}, "finetune"
        refreshed = self.sid_table(self._base_gap)
        if name == "FT-new":
            model, comp = self.model("models/ft-new", refreshed, parent="models/base", seed=seed)
            return model, refreshed, protocol.base, comp, tok(refreshed), "finetune"
        if name == "Full":
            model, comp = self.model("models/full", refreshed, parent=None)
            return model, refreshed, self._base_gap, comp, tok(refreshed), "full"
        method = "greedy" if "greedy" in name else "hungarian"
        table, _ = self.aligned_table(method)
        model, comp = self.model(f"models/ft-aligned-{method}", table, parent="models/base", seed=seed)
        allowed = self._base_gap if name == "FT-aligned+new" else protocol.base
        return model, table, allowed, comp, tok(refreshed), "finetune"

    def evaluate(self, name: str) -> dict[str, Any]:
        """Test-window metrics and compute of a policy; a fine-tuned policy's metrics are
        the mean over ``finetune_seeds``, each seed's kept under ``by_seed``."""
        seeds = self.config.finetune_seeds if name not in ("Base", "Full") else (0,)
        records = [self._evaluate_seed(name, seed) for seed in seeds]
        if len(records) == 1:
            return records[0]
        keys = records[0]["metrics"].keys()
        mean = {k: float(np.mean([r["metrics"][k] for r in records])) for k in keys}
        return {**records[0], "metrics": mean, "seeds": list(seeds), "by_seed": [r["metrics"] for r in records],
                "eval_seconds": sum(r["eval_seconds"] for r in records)}

    def _evaluate_seed(self, name: str, seed: int) -> dict[str, Any]:
        cfg = self.config
        model, table, allowed, comp, tok, kind = self._policy(name, seed)
        slug = name.lower().replace(" ", "-").replace("(", "").replace(")", "").replace("+", "-plus-")

        def build(folder: Path) -> dict[str, Any]:
            started = time.perf_counter()
            metrics = pipeline.evaluate(model, table, self.split, test=cfg.protocol.test, allowed=allowed, ks=cfg.ks,
                                        beam=cfg.beam, max_users=cfg.max_eval_users)
            record = {"metrics": metrics, "compute": {**{k: float(v) for k, v in comp.items() if k.startswith("retriever")}, **tok},
                      "kind": kind, "allowed": str(allowed), "eval_seconds": time.perf_counter() - started,
                      "description": DESCRIPTIONS[name]}
            write_json_atomic(folder.with_suffix(".json"), record)
            return record

        model_stage = _seeded(_model_stage(name), seed)
        key = [table.content_hash, self._fingerprint(model_stage), cfg.ks, cfg.beam, cfg.max_eval_users, str(allowed)]
        return self._cached(_seeded(f"eval/{slug}", seed), key, build,
                            lambda f: json.loads(f.with_suffix(".json").read_text()))

    def sasrec_baselines(self) -> dict[str, Any]:
        """The dense SASRec models behind the collaborative embeddings, scored on the test
        window (written when their embeddings were built)."""
        windows = {"SASRec (base)": self.config.protocol.base, "SASRec (base+gap)": self._base_gap}
        out = {}
        for name, window in windows.items():
            self.embeddings(window)
            out[name] = json.loads((self.out / f"eval/sasrec-{window.start}-{window.stop}.json").read_text())
        return out

    def staleness(self) -> dict[str, Any]:
        """SID churn per level (legacy vs refreshed) and the base model's decay by part."""
        cfg, protocol = self.config, self.config.protocol
        legacy, refreshed = self.sid_table(protocol.base), self.sid_table(self._base_gap)
        base_model, _ = self.model("models/base", legacy, parent=None)

        def build(folder: Path) -> dict[str, Any]:
            record = {
                "churn": sid_churn(legacy, refreshed),
                "by_part": recall_by_part(base_model, legacy, self.split, trained_on=protocol.base, ks=cfg.ks,
                                          beam=cfg.beam, max_users=cfg.max_eval_users),
            }
            write_json_atomic(folder.with_suffix(".json"), record)
            return record

        key = [legacy.content_hash, refreshed.content_hash, self._fingerprint("models/base"), cfg.ks, cfg.beam, cfg.max_eval_users]
        return self._cached("eval/staleness", key, build, lambda f: json.loads(f.with_suffix(".json").read_text()))

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        policies = {name: self.evaluate(name) for name in self.config.policies}
        alignment = {}
        if any("aligned" in p for p in self.config.policies):
            alignment = {m: self.aligned_table(m)[1] for m in ("greedy", "hungarian")}
        results = {
            "dataset": {"name": self.logs.name, **dataset_stats(self.logs, n_parts=self.config.protocol.n_parts)},
            "config": self.config.model_dump(mode="json"),
            "policies": policies,
            "alignment": alignment,
            "baselines": self.sasrec_baselines(),
            "staleness": self.staleness(),
            "wall_seconds": time.perf_counter() - started,
        }
        write_json_atomic(self.out / "results.json", results)
        write_report(results, self.out)
        return results


DESCRIPTIONS = {
    "Base": "legacy SIDs, retriever trained on base",
    "FT-old": "stale legacy SIDs, warm-start fine-tune on gap",
    "FT-new": "SIDs refit on base+gap (unaligned), warm-start fine-tune on gap",
    "FT-aligned (greedy)": "refit SIDs aligned to legacy (greedy), warm-start fine-tune on gap",
    "FT-aligned (hungarian)": "refit SIDs aligned to legacy (Hungarian), warm-start fine-tune on gap",
    "FT-aligned+new": "FT-aligned (hungarian), items first seen in gap also allowed",
    "Full": "SIDs and retriever rebuilt from scratch on base+gap",
}


def _seeded(stage: str, seed: int) -> str:
    return stage if seed == 0 else f"{stage}-seed{seed}"


def _model_stage(policy: str) -> str:
    return {
        "Base": "models/base",
        "FT-old": "models/ft-old",
        "FT-new": "models/ft-new",
        "FT-aligned (greedy)": "models/ft-aligned-greedy",
        "FT-aligned (hungarian)": "models/ft-aligned-hungarian",
        "FT-aligned+new": "models/ft-aligned-hungarian",
        "Full": "models/full",
    }[policy]
