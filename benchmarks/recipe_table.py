"""Every refresh recipe of ``bench_recipes.py`` runs against FT-old+new, at every cell of issue 37's rule.

Reads one or more ``recipes.json`` of one dataset (a later file adds only the recipes the
earlier ones lack, so a candidate run on its own later joins the table) and prints, per
recipe, its mean over the builds and its difference from FT-old+new at Recall and nDCG @ 1,
10, 50, 100, 200 and 500, each marked with its verdict (``▲`` ahead, ``▼`` behind: the crossed
and t intervals both exclude 0; unmarked: level), then the rule fixed before any run applied
to them all: the best mean over the 12 cells among the recipes never behind.

    python benchmarks/recipe_table.py runs/inc-toys/recipes-5cand.json runs/inc-toys/recipes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench_recipes import OPPONENT, REFRESH, RULE_KS
from freshsid.evaluate.intervals import verdict

CELLS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in RULE_KS]
MARK = {"ahead": " ▲", "behind": " ▼"}
POPULAR = "MostPop(gap)+new"


def rows(files: list[Path]) -> dict[str, dict]:
    """Recipe -> {"means": cell -> mean, "against": cell -> interval cell, "source": file}."""
    found: dict[str, dict] = {}
    for path in files:
        run = json.loads(path.read_text())
        for label, against in run["intervals"][OPPONENT].items():
            if label.startswith(REFRESH):
                recipe = label[len(REFRESH):].strip(" []")
                found.setdefault(recipe, {"means": run["means"][label], "against": against, "source": str(path)})
    return found


def choose(found: dict[str, dict]) -> tuple[dict[str, float], str | None]:
    """Each recipe's rule mean, and the rule's choice (None when every recipe is behind somewhere)."""
    means = {r: float(np.mean([row["means"][c] for c in CELLS])) for r, row in found.items()}
    eligible = [r for r, row in found.items() if all(verdict(row["against"][c]) != "behind" for c in CELLS)]
    return means, max(eligible, key=means.get) if eligible else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="recipes.json of one dataset, earlier files first")
    args = parser.parse_args()
    found = rows(args.files)
    means, chosen = choose(found)
    short = [c.replace("recall@", "R@").replace("ndcg@", "N@") for c in CELLS]
    print("| recipe | rule mean | " + " | ".join(short) + " |\n|---|---:|" + "---:|" * len(CELLS))
    first = json.loads(args.files[0].read_text())  # the opponent and the simplest baseline, as the first run scored them
    print(f"| {OPPONENT} (the opponent) | {np.mean([first['means'][OPPONENT][c] for c in CELLS]):.5f} | "
          + " | ".join(f"{first['means'][OPPONENT][c]:.4f}" for c in CELLS) + " |")
    simplest = {"means": first["means"][POPULAR], "against": first["intervals"][OPPONENT][POPULAR]}
    for recipe, row in {f"{POPULAR} (the simplest baseline)": simplest, **found}.items():
        cells = [f"{row['means'][c]:.4f} ({row['against'][c]['diff']:+.4f}{MARK.get(verdict(row['against'][c]), '')})"
                 for c in CELLS]
        print(f"| {recipe} | {np.mean([row['means'][c] for c in CELLS]):.5f} | " + " | ".join(cells) + " |")
    print(f"\nThe rule picks: {chosen or 'none (every recipe is behind somewhere)'}")
    for recipe, row in found.items():
        print(f"  {recipe}: from {row['source']}")


if __name__ == "__main__":
    main()
