"""Study: Base against the dense SASRec trained on its own window, pooled over builds (issue 39's bar).

Issue 39 asks that Base, the retriever every policy starts from, be at least level with a
converged dense SASRec at Recall@10 and nDCG@10 and ahead at Recall@500. The dense reference
is the policy ``SASRec (base)``: the SASRec the legacy SIDs were coded from, trained on Base's
window until its own validation stopped improving, exact top-K over the same items; beside
them the simplest baseline, ``MostPop(gap)``. Each build folder is scored with the config
it was built with, its stages reused (Base is not trained again; only the evaluations
run), and the builds are pooled: Base against SASRec (base) and against MostPop(gap), with
the nested, crossed and t intervals and the verdicts. (MostPop(gap) has seen the part
after Base's window; the bar is the dense model on the same window.)

Two kinds of folders: finished ``freshsid experiment`` runs (their ``results.json`` gives
the config; on the standard split this reads the test part), or the validation builds of
``bench_recipes.py`` (``--validation``: the preset reseeded with each folder's seed, as that
script builds them; reads part 8 only):

    python benchmarks/bench_dense_bar.py --dataset amazon-toys --runs runs/final36-toys-b1,runs/final36-toys-b2
    python benchmarks/bench_dense_bar.py --dataset amazon-toys --validation --runs runs/inc-toys/b1,runs/inc-toys/b2
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from bench_recipes import validation_config
from freshsid.artifacts import write_json_atomic
from freshsid.config import ExperimentConfig
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores
from freshsid.policies import policy
from freshsid.runtime import repeatable
from summarize_runs import build_means, means_table, verdict_table

GENERATIVE, DENSE, POPULAR = "Base", "SASRec (base)", "MostPop(gap)"  # the last: the simplest baseline
KS = (1, 10, 100, 500)
BAR = ["recall@10", "ndcg@10", "recall@500"]  # level at the first two, ahead at the third


def config_of(run: Path, validation: tuple[str, str] | None, threads: int) -> ExperimentConfig:
    """The config ``run`` was built with, asked for Base, the dense reference and MostPop(gap);
    ``validation``: the (preset, first recipe) of a bench_recipes run, whose config is not
    written down."""
    if validation:
        seed = re.fullmatch(r"b(\d+)", run.name)
        if seed is None:
            raise SystemExit(f"{run}: a bench_recipes build folder is named b<seed>")
        config = validation_config(*validation, int(seed.group(1)), threads)
    else:
        config = ExperimentConfig.model_validate(json.loads((run / "results.json").read_text())["config"])
    return config.model_copy(update={"policies": (GENERATIVE, DENSE, POPULAR)})


def score(logs, run: Path, validation: tuple[str, str] | None, threads: int) -> dict:
    """Base, SASRec (base) and MostPop(gap) scored in ``run``: label -> per-user scores."""
    torch.set_num_threads(threads)
    repeatable()
    experiment = Experiment(logs, config_of(run, validation, threads), run)
    return read_scores(run, {label: experiment.evaluate(policy(label)) for label in (GENERATIVE, DENSE, POPULAR)})


def build_options(parser: argparse.ArgumentParser) -> None:
    """The options of a study over finished builds (this script's and ``bench_recency.py``'s)."""
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--runs", required=True, help="comma-separated build folders of one dataset")
    parser.add_argument("--validation", action="store_true", help="the folders are bench_recipes.py builds (b<seed>)")
    parser.add_argument("--preset", default="cpu", help="with --validation: the preset the builds used")
    parser.add_argument("--recipe", default="remap-3", help="with --validation: the builds' first recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the means and intervals here (JSON)")


def builds_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[Path], tuple[str, str] | None]:
    """The build folders (two or more) and, with --validation, their (preset, first recipe)."""
    runs = [Path(r) for r in args.runs.split(",")]
    if len(runs) < 2:
        parser.error("--runs needs two builds or more: with one there is no t interval, so no verdict")
    return runs, (args.preset, args.recipe) if args.validation else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    build_options(parser)
    args = parser.parse_args()
    runs, validation = builds_of(parser, args)
    logs = load_dataset(args.dataset)
    builds = [score(logs, run, validation, args.threads) for run in runs]
    intervals = compare(builds, [DENSE, POPULAR], KS)
    cells = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
    means = build_means(builds, cells)
    print(f"{args.dataset}, {len(runs)} builds ({'validation, part 8' if args.validation else 'as each run was split'})\n")
    print(means_table(means, cells))
    print("\n" + verdict_table(intervals, [(GENERATIVE, DENSE), (GENERATIVE, POPULAR)], cells))
    if args.out:
        write_json_atomic(args.out, {"runs": [str(r) for r in runs], "means": means, "intervals": intervals})


if __name__ == "__main__":
    main()
