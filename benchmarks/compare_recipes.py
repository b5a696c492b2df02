"""Refresh recipes side by side, from finished ``freshsid experiment --recipe NAME`` runs.

    python benchmarks/compare_recipes.py runs/val/beauty-cold runs/val/beauty-stable runs/val/beauty-warm

Per run (one recipe each, same split): the share of common items keeping their legacy
code per level after Hungarian alignment, the mean overlap of each item's 10 nearest
neighbours (cosine) in the legacy and the refreshed embedding spaces, the refreshed
dense SASRec's own Recall@K_max, and the policies at the run's largest three cutoffs.
Reads results.json and the two embedding artifacts of each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from freshsid.embed.store import Embeddings
from freshsid.evaluate.stages import RunLayout
from freshsid.recode import NEIGHBOURS, CollabSids, neighbourhood_overlap

def neighbour_overlap(legacy: Embeddings, refreshed: Embeddings) -> float:
    """Mean share of an item's 10 nearest neighbours the two spaces agree on, over every common item."""
    return float(neighbourhood_overlap(legacy, refreshed, np.intersect1d(legacy.items, refreshed.items)).mean())


def median_cosine(legacy: Embeddings, refreshed: Embeddings) -> float:
    """Median cosine between an item's legacy and refreshed vector (meaningful only when
    the refreshed SASRec continued from the legacy one, so the coordinates correspond)."""
    common = np.intersect1d(legacy.items, refreshed.items)
    a, b = legacy.vectors[common], refreshed.vectors[common]
    return float(np.median((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)))


def row(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    layout = RunLayout(run)
    legacy = Embeddings.load(layout.path(layout.legacy) / CollabSids.EMBEDDINGS)
    refreshed = Embeddings.load(layout.path(layout.refresh) / CollabSids.EMBEDDINGS)
    levels = results["alignment"]["hungarian"]["levels"]
    return {"run": run.name, "recipe": results["config"]["recipe"],
            "kept": [lv["kept_after"] for lv in levels], "knn": neighbour_overlap(legacy, refreshed),
            "cosine": median_cosine(legacy, refreshed),
            "sasrec": (results["policies"]["SASRec"] if "SASRec" in results["policies"]  # (runs before issue 22: a block)
                       else results["baselines"]["SASRec (base+gap)"])["metrics"],
            "policies": {name: p["metrics"] for name, p in results["policies"].items()},
            "ks": results["config"]["ks"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [row(run) for run in args.runs]
    ks = rows[0]["ks"][-3:]
    k_max = ks[-1]
    print(f"| recipe | codes kept per level (Hungarian) | {NEIGHBOURS}-NN overlap | median cosine, same item | "
          f"refreshed SASRec R@{k_max} |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        kept = " / ".join(f"{x:.1%}" for x in r["kept"])
        print(f"| {r['recipe']} | {kept} | {r['knn']:.3f} | {r['cosine']:.3f} | {r['sasrec'][f'recall@{k_max}']:.4f} |")
    print()
    names = [n for n in rows[0]["policies"]]
    header = " | ".join(f"R@{k}" for k in ks) + " | " + " | ".join(f"nDCG@{k}" for k in ks)
    print(f"| recipe | policy | {header} |")
    print("|---|---|" + "---:|" * (2 * len(ks)))
    for r in rows:
        for name in names:
            m = r["policies"].get(name)
            if m is None:
                continue
            cells = [f"{m[f'recall@{k}']:.4f}" for k in ks] + [f"{m[f'ndcg@{k}']:.4f}" for k in ks]
            print(f"| {r['recipe']} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
