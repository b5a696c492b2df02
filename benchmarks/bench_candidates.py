"""Study: issue 23's method candidates against the default refresh, on the validation split.

Each build is a finished validation run (``freshsid experiment --validation``) holding
FT-old, FT-old+new, Refresh with remap and Refresh with remap+new. A candidate is a
recipe that builds the same SIDs as the run's (``Recipe.recode_settings``) and starts the
remapping fine-tune otherwise (``Recipe.finetune_start``), so only the two refresh rows
are fine-tuned again, from the build's own Base, beside the run (``variants/<candidate>/``).
Pooled over the builds (builds resampled, then users; 1,000 resamples), each candidate's
difference from the run's refresh, FT-old and FT-old+new at K = 100, 200, 500:

    freshsid experiment --dataset amazon-toys --validation --config runs/builds/final-b0.json \\
        --policies "MostPop(gap)+new,FT-old,FT-old+new,Refresh with remap,Refresh with remap+new" --out runs/val23-toys-b0
    python benchmarks/bench_candidates.py runs/val23-toys-b0 runs/val23-toys-b1 --candidates remap-3-events,remap-3-emb

Writes ``candidates.json`` (the intervals) into the first build and prints the tables.
Refuses a run of the standard split: candidates are chosen without reading its test part.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from freshsid.artifacts import write_json_atomic
from freshsid.config import PROTOCOL, ExperimentConfig, load_config
from freshsid.recipes import RECIPES
from freshsid.data.interactions import Interactions
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores
from freshsid.evaluate.report import interval_sections

REFRESH = ("Refresh with remap", "Refresh with remap+new")
REFERENCES = ("FT-old", "FT-old+new", *REFRESH)
KS = (100, 200, 500)


def check_build(build: Path, config: ExperimentConfig, policies: dict, candidates: list[str]) -> None:
    """Exit 2 with one sentence when ``build`` cannot host the candidates."""
    problem = None
    if config.protocol.test == PROTOCOL.test:
        problem = f"{build} is a run of the standard split; candidates are chosen on the validation split (--validation)"
    elif missing := [label for label in REFERENCES if label not in policies]:
        problem = f"{build} has no {', '.join(missing)}; rerun it with those policies"
    for name in candidates:
        if problem is None and name not in RECIPES:
            problem = f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}"
        elif problem is None and RECIPES[name].recode_settings() != RECIPES[config.recipe].recode_settings():
            problem = f"{name} builds other SIDs than {build}'s recipe {config.recipe}; a candidate may change only how the fine-tune starts"
    if problem:
        print(f"error: {problem}.", file=sys.stderr)
        sys.exit(2)


def scores_of(build: Path, candidates: list[str], logs: Interactions | None = None) -> dict:
    """Policy label -> per-user scores: the run's references and every candidate's refresh
    rows (``logs``: the run's dataset, loaded by its name when not given)."""
    results = json.loads((build / "results.json").read_text())
    config = load_config(build / "results.json")
    check_build(build, config, results["policies"], candidates)
    frames = read_scores(build, {label: results["policies"][label] for label in REFERENCES})
    logs = logs or _dataset(results["dataset"]["name"])
    for name in candidates:
        study = config.model_copy(update={"recipe": name, "policies": REFRESH})
        variant = Experiment(logs, study, build, variant=name).run()
        frames |= {f"{label} [{name}]": frame for label, frame in read_scores(build, variant["policies"]).items()}
    return frames


@functools.cache
def _dataset(name: str) -> Interactions:
    """A named dataset, loaded once for all the builds of a study."""
    return load_dataset(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", type=Path, help="finished validation runs of one dataset, one per build")
    parser.add_argument("--candidates", required=True, help="comma-separated recipes (freshsid.recipes.RECIPES)")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    candidates = args.candidates.split(",")
    builds = [scores_of(build, candidates) for build in args.builds]
    intervals = compare(builds, REFERENCES, KS, n_resamples=args.resamples)
    write_json_atomic(args.builds[0] / "candidates.json", {"builds": [str(b) for b in args.builds],
                                                          "candidates": candidates, "intervals": intervals})
    for reference, table in interval_sections({"intervals": intervals, "policies": {}}).items():
        print(f"#### Against {reference}\n\n{table}\n")


if __name__ == "__main__":
    main()
