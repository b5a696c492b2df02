"""Study: where incremental coding's new-item vectors come from, on the validation split.

A team that keeps its vocabulary codes new items with the frozen tokenizer; the tokenizer
reads vectors in the space it was fit on, so the new items' vectors must live there. Three
ways (``Recipe.incremental``): ``fold-in`` (the legacy SASRec frozen, only the new rows
trained), ``procrustes`` (the SASRec continued, mapped back onto the legacy space) and
``continued`` (the continued SASRec as it is: the old, drifting reference). Per build: one
validation run (``freshsid experiment --validation``: MostPop(gap)+new, FT-old), then
FT-old+new once per way beside it (``variants/<way>/``, its table in ``incremental-<way>``).
Prints each way's code consistency (the share of legacy items whose legacy SID the
frozen tokenizer gives back from the vectors it codes with) and, pooled over the builds,
every way against the others and FT-old (nested, crossed and t intervals):

    python benchmarks/bench_incremental.py --dataset amazon-toys --seeds 0,1 --out runs/inc-toys

Reads only the validation split's last part (part 8), never the test part.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from freshsid.artifacts import write_json_atomic
from freshsid.config import preset
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores
from freshsid.evaluate.report import interval_sections
from freshsid.policies import policy
from freshsid.runtime import repeatable
from freshsid.sid.table import SidTable

WAYS = ("continued", "procrustes", "fold-in")
KS = (1, 10, 100, 500)  # the head and the tail (those of them the preset scores)


def build(logs, seed: int, out: Path, size: str, recipe: str, threads: int) -> tuple[dict, dict]:
    """One build's per-user scores by label, and each way's code consistency (only the
    stages these policies need: no staleness curve, no report)."""
    base = preset(size, recipe=recipe, threads=threads).reseeded(seed)
    config = base.model_copy(update={"protocol": base.protocol.validation(), "policies": ("FT-old+new",)})
    torch.set_num_threads(threads)
    repeatable()
    run = Experiment(logs, config, out)
    frames = read_scores(out, {label: run.evaluate(policy(label)) for label in ("MostPop(gap)+new", "FT-old")})
    consistency = {}
    for way in WAYS:
        study = Experiment(logs, config, out, variant=way)
        study.how = study.how.model_copy(update={"incremental": way})
        frames[f"FT-old+new [{way}]"] = read_scores(out, {"FT-old+new": study.evaluate(policy("FT-old+new"))})["FT-old+new"]
        stats = SidTable.load(out / study.layout.coded(way) / "sids").meta["stats"]["incremental"]
        consistency[way] = stats["consistency"]
    return frames, consistency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", default="0,1", help="comma-separated build seeds")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--recipe", default="remap-3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logs = load_dataset(args.dataset)
    builds, consistency = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        frames, consistency[seed] = build(logs, seed, args.out / f"b{seed}", args.preset, args.recipe, args.threads)
        builds.append(frames)
    references = [f"FT-old+new [{way}]" for way in WAYS] + ["FT-old"]
    ks = tuple(k for k in KS if f"recall@{k}" in builds[0]["FT-old"].columns)
    intervals = compare(builds, references, ks)
    write_json_atomic(args.out / "incremental.json", {"seeds": args.seeds, "consistency": consistency,
                                                      "intervals": intervals})
    print(json.dumps(consistency, indent=1))
    for reference, table in interval_sections({"intervals": intervals, "policies": {}}).items():
        print(f"#### Against {reference}\n\n{table}\n")


if __name__ == "__main__":
    main()
