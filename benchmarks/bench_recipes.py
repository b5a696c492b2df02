"""Study: refresh recipes against the strongest incremental coding, on the validation split.

The candidates of issue 37 (distillation from Base, replay, whole-prefix remap, drift-
confident re-coding) against ``remap-3`` they build on, each scored as "Refresh with
remap+new", and FT-old+new (new items folded into the legacy SASRec, coded by the frozen
tokenizer) as the opponent. Per build seed: one validation run (``freshsid experiment
--validation``: MostPop(gap)+new, FT-old+new), then each recipe's refresh as a variant beside
it (``variants/<recipe>/``), sharing its legacy SIDs and Base:

    python benchmarks/bench_recipes.py --dataset amazon-toys --seeds 1,2,3 --out runs/inc-toys

A recipe that recodes differently (drift-remap-3) rebuilds the run's shared ``refresh``
stage; those run last, and a rerun rebuilds the recode of the others (about 10 s a build
on Toys: the continued SASRec and tokenizer; the fine-tunes are keyed by the table, so
stay cached). Pooled over the builds, every policy
against FT-old+new (nested, crossed and t intervals, sign counts), and the choice by the
rule fixed before any run (issue 37): the recipe with the best mean Recall@K and nDCG@K
over K in {1, 10, 50, 100, 200, 500} whose worst cell is not behind FT-old+new. Reads only
the validation split's last part (part 8), never the test part. ``--opponent-at cold-ft30`` also
fine-tunes FT-old+new as that recipe fine-tunes (the same budget and schedule), so that a
recipe with a longer fine-tune meets the opponent at its own budget too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from freshsid.artifacts import write_json_atomic
from freshsid.config import ExperimentConfig, preset
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores, verdict
from freshsid.evaluate.report import interval_sections
from freshsid.policies import policy
from freshsid.recipes import RECIPES
from freshsid.runtime import repeatable
from summarize_runs import means_table

RULE_KS = (1, 10, 50, 100, 200, 500)
OPPONENT, REFRESH = "FT-old+new", "Refresh with remap+new"
CANDIDATES = ("remap-3", "remap-3-distill", "remap-3-replay", "remap-3-prefix", "drift-remap-3")


def validation_config(size: str, recipe: str, seed: int, threads: int) -> ExperimentConfig:
    """A build's config: the preset with ``recipe``, reseeded, on the validation split."""
    base = preset(size, recipe=recipe, threads=threads).reseeded(seed)
    return base.model_copy(update={"protocol": base.protocol.validation(), "policies": (OPPONENT,)})


def build(logs, seed: int, out: Path, size: str, recipes: list[str], threads: int,
          opponent_at: tuple[str, ...] = ()) -> dict:
    """One build's per-user scores by label: the opponents once, the refresh once per recipe,
    and the opponent again at the fine-tune budget of each recipe in ``opponent_at``."""
    torch.set_num_threads(threads)
    repeatable()

    def config(recipe: str) -> ExperimentConfig:
        return validation_config(size, recipe, seed, threads)

    run = Experiment(logs, config(recipes[0]), out)
    frames = read_scores(out, {label: run.evaluate(policy(label)) for label in ("MostPop(gap)+new", OPPONENT)})
    shared = RECIPES[recipes[0]].recode_settings()
    for recipe in sorted(recipes, key=lambda r: RECIPES[r].recode_settings() != shared):  # (stable: the others last)
        study = Experiment(logs, config(recipe), out, variant=recipe)
        frames[f"{REFRESH} [{recipe}]"] = read_scores(out, {REFRESH: study.evaluate(policy(REFRESH))})[REFRESH]
    for recipe in opponent_at:  # the run's own SIDs and coding, fine-tuned as ``recipe`` fine-tunes (equal budget)
        own = config(recipes[0])
        tuned = own.model_copy(update={"finetune": RECIPES[recipe].finetune_config(own.finetune)})
        study = Experiment(logs, tuned, out, variant=f"ft-{recipe}")
        frames[opponent_at_label(recipe)] = read_scores(out, {OPPONENT: study.evaluate(policy(OPPONENT))})[OPPONENT]
    return frames


def opponent_at_label(recipe: str) -> str:
    return f"{OPPONENT} [{recipe}'s fine-tune]"


def choose(builds: list[dict], recipes: list[str], intervals: dict) -> dict:
    """The pre-registered choice: each recipe's mean over the rule's cells, its worst verdict
    against the opponent, and the winner among those never behind."""
    cells = [f"{m}@{k}" for m in ("recall", "ndcg") for k in RULE_KS]
    rows = {}
    for recipe in recipes:
        label = f"{REFRESH} [{recipe}]"
        means = [float(np.mean([b[label][c].mean() for b in builds])) for c in cells]
        verdicts = {c: verdict(intervals[OPPONENT][label][c]) for c in cells}
        rows[recipe] = {"mean": float(np.mean(means)), "behind": [c for c, v in verdicts.items() if v == "behind"],
                        "ahead": [c for c, v in verdicts.items() if v == "ahead"]}
    eligible = [r for r in recipes if not rows[r]["behind"]]
    return {"rows": rows, "chosen": max(eligible, key=lambda r: rows[r]["mean"]) if eligible else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated build seeds")
    parser.add_argument("--recipes", default=",".join(CANDIDATES), help="the first is the run's own")
    parser.add_argument("--opponent-at", default="",
                        help="comma-separated recipes: also fine-tune the opponent as each of them does (its budget)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logs, recipes = load_dataset(args.dataset), args.recipes.split(",")
    if len(args.seeds.split(",")) < 2:
        parser.error("--seeds needs two builds or more: with one there is no t interval, so no verdict says 'behind'")
    opponent_at = tuple(r for r in args.opponent_at.split(",") if r)
    unknown = [r for r in (*recipes, *opponent_at) if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; the recipes are {', '.join(RECIPES)}")
    builds = [build(logs, int(seed), args.out / f"b{seed}", args.preset, recipes, args.threads, opponent_at)
              for seed in args.seeds.split(",")]
    intervals = compare(builds, [OPPONENT, f"{REFRESH} [{recipes[0]}]", *map(opponent_at_label, opponent_at)],
                        RULE_KS)
    choice = choose(builds, recipes, intervals)
    # (base: the scores on the labels that are base items only, over the users with one: where
    # the head is lost, old items or new)
    means = {label: {c: float(np.mean([b[label][c].drop_nans().mean() for b in builds]))
                     for c in builds[0][label].columns if c.startswith(("recall@", "ndcg@", "base:"))}
             for label in builds[0]}
    write_json_atomic(args.out / "recipes.json", {"seeds": args.seeds, "means": means, "intervals": intervals,
                                                  "choice": choice})
    columns = [f"recall@{k}" for k in RULE_KS] + ["ndcg@10", "ndcg@500", "base:recall@1", "base:recall@500"]
    print(means_table(means, columns))
    print(json.dumps(choice, indent=1))
    for reference, table in interval_sections({"intervals": intervals, "policies": {}}).items():
        print(f"#### Against {reference}\n\n{table}\n")


if __name__ == "__main__":
    main()
