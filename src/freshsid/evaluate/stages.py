"""Where an experiment keeps its stages, and how it skips the ones already built.

:class:`RunLayout` names every stage folder of a run once; the runner and the
benchmarks that read a finished run both ask it instead of rebuilding paths.
:class:`StageCache` records in ``stages.json`` the fingerprint of everything a
stage was built from, so a rerun loads what is current and rebuilds the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from freshsid.artifacts import fingerprint_of, write_json_atomic
from freshsid.errors import FreshsidError
from freshsid.policies import ModelSpec, Policy, Start

T = TypeVar("T")
STAGES_FILE = "stages.json"  # what marks a folder as an experiment run
SECONDS_FILE = "stage_seconds.json"  # wall seconds of each stage's last build (the run's profile)


class RunLayout:
    """The stage folders of one experiment run under ``root``.

    ``variant`` names a fine-tuning setting beside the preset's (a budget study): the
    fine-tuned models and their evaluations get their own folders, the shared stages
    (SIDs, Base, Full) stay where they are."""

    def __init__(self, root: Path, variant: str | None = None) -> None:
        self.root = Path(root)
        self.variant = variant

    legacy = "legacy"  # freshsid.recode.CollabSids on base: SASRec embeddings + the legacy table
    refresh = "refresh"  # freshsid.recode.Recoded on base+gap: refreshed build + aligned tables
    incremental = "incremental"  # the legacy table plus the gap's new items coded by the legacy tokenizer
    rebuild = "rebuild"  # freshsid.recode.CollabSids on base+gap trained anew: Full's SIDs, the dense SASRec
    staleness = "eval/staleness"

    def model(self, spec: ModelSpec, seed: int = 0) -> str:
        return _seeded(self._varied(f"models/{spec.slug}", spec.start is not Start.SCRATCH), seed)

    def evaluation(self, policy: Policy, seed: int = 0) -> str:
        return _seeded(self._varied(f"eval/{policy.slug}", policy.finetuned), seed)

    def users(self, evaluation: str) -> Path:
        """The per-user scores an evaluation writes beside its record (``<stage>.users.parquet``)."""
        return self.path(evaluation).with_suffix(".users.parquet")

    def coded(self, vectors: str) -> str:
        """The incremental coding stage of a way of placing new items' vectors (the
        default's is :attr:`incremental`; a study of the others keeps each beside it)."""
        return self.incremental if vectors == "fold-in" else f"{self.incremental}-{vectors}"

    def _varied(self, stage: str, finetuned: bool) -> str:
        return f"{stage}@{self.variant}" if finetuned and self.variant else stage

    def sasrec(self, which: str) -> str:
        return f"eval/sasrec-{which}"

    def path(self, stage: str) -> Path:
        return self.root / stage


def _seeded(stage: str, seed: int) -> str:
    return stage if seed == 0 else f"{stage}-seed{seed}"


class StageCache:
    """Build-or-load for the stages of a run, keyed by what each was built from."""

    def __init__(self, layout: RunLayout, log: Callable[[str], None] = print) -> None:
        self.layout, self.log = layout, log
        layout.root.mkdir(parents=True, exist_ok=True)
        self._file = layout.root / STAGES_FILE
        self._keys: dict[str, str] = json.loads(self._file.read_text()) if self._file.exists() else {}
        seconds = layout.root / SECONDS_FILE
        self.seconds: dict[str, float] = json.loads(seconds.read_text()) if seconds.exists() else {}
        # What this process already built or loaded, by stage: every policy asks for the
        # same SIDs and Base, which need not be read and hash-checked again each time.
        self._held: dict[str, tuple[str, Any]] = {}

    def get(self, stage: str, key: Any, build: Callable[[Path], T], load: Callable[[Path], T], *,
            former: list[Any] | None = None) -> T:
        """``load(folder)`` if ``stage`` was built from ``key``, else ``build(folder)`` and record it.
        ``former``: the same inputs as earlier versions of the code keyed them (one key
        each); a stage recorded under one of them is loaded and recorded under ``key``."""
        folder = self.layout.path(stage)
        key = fingerprint_of(key)
        held = self._held.get(stage)
        if held is not None and held[0] == key:
            return held[1]
        result = None
        recorded = self._keys.get(stage)
        if recorded in {key, *(fingerprint_of(k) for k in former or ())}:
            try:
                result = load(folder)
            except (FreshsidError, FileNotFoundError):
                pass  # missing or damaged artifact: rebuild it
        if result is None:
            self.log(f"[{time.strftime('%H:%M:%S')}] {stage}")
            started = time.perf_counter()
            result = build(folder)
            self.seconds[stage] = time.perf_counter() - started
            write_json_atomic(self.layout.root / SECONDS_FILE, self.seconds)
            self.log(f"[{time.strftime('%H:%M:%S')}] {stage} built in {self.seconds[stage]:.1f} s")
        if recorded != key:
            self._keys[stage] = key
            write_json_atomic(self._file, self._keys)
        self._held[stage] = (key, result)
        return result

    def adopt(self, stage: str, key: Any) -> None:
        """Record that the artifact already in ``stage``'s folder was built from ``key``
        (one copied from another run); the next :meth:`get` loads it."""
        self._keys[stage] = fingerprint_of(key)
        write_json_atomic(self._file, self._keys)

    def record(self, stage: str, build: Callable[[Path], dict], key: Any) -> dict:
        """A stage whose artifact is one JSON record (``<stage>.json``)."""

        def build_and_write(folder: Path) -> dict:
            record = build(folder)
            write_json_atomic(folder.with_suffix(".json"), record)
            return record

        return self.get(stage, key, build_and_write, lambda folder: json.loads(folder.with_suffix(".json").read_text()))
