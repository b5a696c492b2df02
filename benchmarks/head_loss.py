"""Study: which test items the refresh loses at the head, new, merged, moved or kept (issue 37).

Reads a finished ``bench_recipes.py`` run (validation split, part 8). In each build every
test user with a single label is put in one class by how the refresh's table (the
recipe's aligned table) codes the label against the legacy table:

- ``new``: the legacy table does not code it (first seen in the gap);
- ``merged``: its refreshed semantic code (every level but the collision suffix) also holds
  an old item whose legacy semantic code was another: items that were apart now share a code;
- ``level L``: otherwise, L is the first semantic level whose code changed (level 1: it left
  its legacy first-level code, so the whole prefix the retriever learnt for it is gone);
- ``kept``: the same semantic code.

Per class: its share of the users, then the refresh (Refresh with remap+new) against the
strongest incremental coding (FT-old+new) at Recall@1, @10 and @100 pooled over the builds
(nested interval and t interval over build means; the classes hold other users in each
build, so there is no crossed interval). Only the recipe's recode is rebuilt (seconds) and
the scores are the run's, given the run's ``--threads`` (a recode on another number of
threads differs, so its fine-tune and scores are rebuilt too):

    python benchmarks/head_loss.py --dataset amazon-toys --seeds 1,2,3 --out runs/inc-toys
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from bench_recipes import OPPONENT, REFRESH, validation_config
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores
from freshsid.policies import policy
from freshsid.runtime import repeatable
from freshsid.sid.table import SidTable

KS = (1, 10, 100)


def classes(legacy: SidTable, refreshed: SidTable, items: np.ndarray) -> np.ndarray:
    """Each of ``items`` (coded by ``refreshed``) as "new", "merged", "level L" (its first
    semantic level whose code changed) or "kept"."""
    levels = legacy.n_levels
    common = np.intersect1d(legacy.items, refreshed.items)
    was, now = legacy.codes_for(common)[:, :levels], refreshed.codes_for(common)[:, :levels]
    sources: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    for old, new in zip(map(tuple, was.tolist()), map(tuple, now.tolist()), strict=True):
        sources.setdefault(new, set()).add(old)
    changed = was != now
    first = np.where(changed.any(axis=1), changed.argmax(axis=1) + 1, 0)
    kind = ["merged" if len(sources[tuple(n)]) > 1 else f"level {f}" if f else "kept"
            for n, f in zip(now.tolist(), first.tolist(), strict=True)]
    where = dict(zip(common.tolist(), kind, strict=True))
    return np.array([where.get(item, "new") for item in items.tolist()])


def build(logs, seed: int, out: Path, size: str, recipe: str, threads: int) -> dict[str, pl.DataFrame]:
    """One build's per-user scores of the two policies, single-label users only, with the class of their label."""
    torch.set_num_threads(threads)
    repeatable()
    config = validation_config(size, recipe, seed, threads)
    run, study = Experiment(logs, config, out), Experiment(logs, config, out, variant=recipe)
    frames = read_scores(out, {OPPONENT: run.evaluate(policy(OPPONENT))})
    frames[REFRESH] = read_scores(out, {REFRESH: study.evaluate(policy(REFRESH))})[REFRESH]
    examples = run.examples()
    single = np.diff(examples.label_indptr) == 1
    labels = examples.label_items[examples.label_indptr[:-1][single]]
    kind = classes(run.legacy().table, study.table(policy(REFRESH).model.tokenizer), labels)
    chosen = pl.DataFrame({"user": examples.users[single], "class": kind})
    return {label: frame.join(chosen, on="user", how="inner", maintain_order="left") for label, frame in frames.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated build seeds of the bench_recipes run")
    parser.add_argument("--recipe", default="remap-3", help="the bench_recipes run's own (its first)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="the bench_recipes run folder")
    args = parser.parse_args()
    logs = load_dataset(args.dataset)
    builds = [build(logs, int(seed), args.out / f"b{seed}", args.preset, args.recipe, args.threads)
              for seed in args.seeds.split(",")]
    rows: dict[str, dict] = {}
    found = sorted({c for b in builds for c in b[REFRESH]["class"].to_list()}, key=lambda c: (c != "new", c))
    for name in found:
        subset = [{label: frame.filter(pl.col("class") == name) for label, frame in b.items()} for b in builds]
        share = float(np.mean([s[REFRESH].height / b[REFRESH].height for s, b in zip(subset, builds, strict=True)]))
        if min(s[REFRESH].height for s in subset) < 2:
            print(f"{name}: fewer than two users in a build; left out of the table")
            continue
        cells = compare(subset, [OPPONENT], KS)[OPPONENT][REFRESH]
        means = {label: {f"recall@{k}": float(np.mean([s[label][f"recall@{k}"].mean() for s in subset])) for k in KS}
                 for label in (OPPONENT, REFRESH)}
        rows[name] = {"share": share, "users": sum(s[REFRESH].height for s in subset), "means": means,
                      "diff": {f"recall@{k}": cells[f"recall@{k}"] for k in KS}}
    (args.out / "head_loss.json").write_text(json.dumps(rows, indent=1))
    span = lambda c, side: (f"[{c[side + '_low']:+.4f}, {c[side + '_high']:+.4f}]"  # noqa: E731
                            if c.get(side + "_low") is not None else "—")
    print("| class | share of users | " + " | ".join(f"R@{k} {OPPONENT} | R@{k} refresh | Δ (nested / t)" for k in KS)
          + " |\n|---|---:|" + "---:|---:|---|" * len(KS))
    for name, row in rows.items():
        cells = [f"{row['means'][OPPONENT][f'recall@{k}']:.4f} | {row['means'][REFRESH][f'recall@{k}']:.4f} | "
                 f"{row['diff'][f'recall@{k}']['diff']:+.4f} [{row['diff'][f'recall@{k}']['low']:+.4f}, "
                 f"{row['diff'][f'recall@{k}']['high']:+.4f}] / {span(row['diff'][f'recall@{k}'], 't')}" for k in KS]
        print(f"| {name} | {row['share']:.1%} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
