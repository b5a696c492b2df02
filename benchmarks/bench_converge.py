"""Study: a from-scratch retriever (Base or Full) at several training budgets, on the validation split.

Each budget is its own training run (``--epochs`` caps the cosine schedule; ``--patience``
stops it once the held-out loss has not improved for that many epochs; an optional third
field sets the label smoothing), in its own folder ``<out>/<policy>-e<epochs>-p<patience>
[-ls<smoothing>]``; ``--from`` seeds each new folder with a copy of an earlier build of the
same seed (its SIDs are reused, its models retrained only where the budget differs).
Prints, per budget: epochs run, the best epoch, training FLOPs and seconds, Recall/nDCG at
the head and the tail, and every budget against the first and against the dense SASRec the
SIDs were coded from (exact top-K over the same items; it stops early on its own), with
nested intervals over the users of one build:

    python benchmarks/bench_converge.py --dataset amazon-toys --seed 1 --out runs/conv-toys \\
        --budgets 8:2,40:3 --from runs/inc-toys/b1

With several build seeds (``--seeds 1,2``; ``{seed}`` in ``--from`` and each build in
``<out>/b<seed>``) the builds are also pooled: every budget against the first and against
the dense SASRec, with the crossed and t intervals over users and builds and the verdicts:

    python benchmarks/bench_converge.py --dataset amazon-beauty --seeds 1,2 --out runs/smooth-beauty \\
        --budgets 8:2,8:2:0.1 --from 'runs/inc-beauty/b{seed}'

Reads only the validation split's last part, never the test part.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from freshsid.artifacts import write_json_atomic
from freshsid.config import preset
from freshsid.data.registry import load_dataset
from freshsid.embed.collab import SASRec
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores, user_scores
from freshsid.evaluate.report import interval_sections
from freshsid.policies import policy
from freshsid.runtime import repeatable
from summarize_runs import build_means, means_table, verdict_table

KS = (1, 10, 100, 500)
DENSE = "dense SASRec"


def parse_budget(text: str) -> tuple[int, int, float]:
    """``EPOCHS:PATIENCE[:SMOOTHING]`` -> (epochs, patience, label smoothing)."""
    fields = text.split(":")
    if len(fields) not in (2, 3):
        raise SystemExit(f"--budgets: {text!r} is not EPOCHS:PATIENCE or EPOCHS:PATIENCE:SMOOTHING")
    return int(fields[0]), int(fields[1]), float(fields[2]) if len(fields) == 3 else 0.0


def budget_run(logs, args, seed: int, out: Path, epochs: int, patience: int, smoothing: float
               ) -> tuple[str, Experiment, dict]:
    """The validation build of one budget, its policy evaluated."""
    smooth = f" ls{smoothing:g}" if smoothing else ""
    label = f"{args.policy} e{epochs} p{patience}{smooth}"
    folder = out / f"{args.policy.lower()}-e{epochs}-p{patience}{smooth.replace(' ', '-')}"
    if args.source is not None and not folder.exists():
        shutil.copytree(args.source.replace("{seed}", str(seed)), folder)
    base = preset(args.preset, recipe=args.recipe, threads=args.threads).reseeded(seed)
    fit = base.fit.model_copy(update={"epochs": epochs, "patience": patience, "label_smoothing": smoothing})
    config = base.model_copy(update={"protocol": base.protocol.validation(), "policies": (args.policy,), "fit": fit})
    run = Experiment(logs, config, folder)
    record = run.evaluate(policy(args.policy))
    return label, run, record


def dense_scores(run: Experiment, label: str) -> object:
    """The dense SASRec trained on the window of ``label``'s SIDs, scored on the run's users
    over the items ``label`` may return."""
    examples, row = run.examples(), policy(label)
    allowed = run.split.allowed_items(run.protocol.window(row.allowed))
    ranked = SASRec.restore(run.sasrec_embeddings(row.model.train), run.logs.n_items).recommend(
        examples.inputs, max(run.config.ks), allowed_items=allowed)
    return user_scores(ranked, examples, ks=run.config.ks, base_items=run.split.allowed_items(run.protocol.base),
                       new_items=run.split.new_items(run.protocol.gap))


def build(logs, args, seed: int, out: Path) -> dict:
    """Every budget of one build seed, and the dense SASRec: label -> per-user scores."""
    frames, rows = {}, []
    for budget in args.budgets.split(","):
        label, run, record = budget_run(logs, args, seed, out, *parse_budget(budget))
        frames |= {label: read_scores(run.out, {args.policy: record})[args.policy]}
        manifest = json.loads((run.layout.path(record["model"]) / "manifest.json").read_text())
        history = manifest["info"]["history"]
        rows.append({"budget": label, "epochs_run": len(history), "best_epoch": manifest["info"]["best_epoch"] + 1,
                     "valid_loss": [round(h["valid_loss"], 4) for h in history],
                     "tflops": record["compute"]["retriever_flops"] / 1e12,
                     "seconds": record["compute"]["retriever_seconds"],
                     **{k: record["metrics"][k] for k in record["metrics"] if int(k.split("@")[1]) in KS}})
    frames[DENSE] = dense_scores(run, args.policy)
    rows.append({"budget": DENSE, **{f"{m}@{k}": float(np.mean(frames[DENSE][f"{m}@{k}"].to_numpy()))
                                     for k in KS for m in ("recall", "ndcg") if f"recall@{k}" in frames[DENSE].columns}})
    ks = tuple(k for k in KS if f"recall@{k}" in frames[DENSE].columns)
    intervals = compare([frames], [next(iter(frames)), DENSE], ks)
    write_json_atomic(out / f"{args.policy.lower()}-converge.json", {"rows": rows, "intervals": intervals})
    print(f"build {seed}")
    for row in rows:
        print(json.dumps(row))
    for reference, table in interval_sections({"intervals": intervals, "policies": {}}).items():
        print(f"#### Against {reference}\n\n{table}\n")
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", "--seeds", dest="seeds", default="0",
                        help="the build seed, or several, comma-separated (then pooled)")
    parser.add_argument("--policy", default="Base", choices=("Base", "Full"))
    parser.add_argument("--budgets", default="8:2,40:3", help="comma-separated EPOCHS:PATIENCE[:SMOOTHING]")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--recipe", default="remap-3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from", dest="source", help="an earlier build of this seed to copy ({seed}: the seed)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) > 1 and args.source is not None and "{seed}" not in args.source:
        parser.error("with several --seeds, --from names each build with {seed}")
    torch.set_num_threads(args.threads)
    repeatable()
    logs = load_dataset(args.dataset)
    builds = [build(logs, args, seed, args.out if len(seeds) == 1 else args.out / f"b{seed}") for seed in seeds]
    if len(builds) < 2:
        return
    labels = list(builds[0])
    ks = tuple(k for k in KS if f"recall@{k}" in builds[0][DENSE].columns)
    intervals = compare(builds, [labels[0], DENSE], ks)
    cells = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    means = build_means(builds, cells)
    write_json_atomic(args.out / f"{args.policy.lower()}-converge-pooled.json",
                      {"seeds": seeds, "means": means, "intervals": intervals})
    print(f"\n{args.dataset}, builds {seeds}, pooled\n")
    print(means_table(means, cells, first="budget"))
    pairs = [(label, ref) for ref in (labels[0], DENSE) for label in labels if label not in (ref, DENSE)]
    print("\n" + verdict_table(intervals, pairs, cells))


if __name__ == "__main__":
    main()
