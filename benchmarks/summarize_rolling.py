"""Markdown tables for benchmarks/RESULTS.md from finished ``freshsid rolling`` runs.

    python benchmarks/summarize_rolling.py runs/rolling36-beauty runs/rolling36-toys runs/rolling36-sports

First table, per run and strategy: mean Recall@K and nDCG@K over the rounds at the head
(K = 10) and at the run's largest cutoff, the difference from Incremental at both with
its 95% interval (the mean over rounds of the per-round paired differences; users
resampled within each round), the cumulative retriever FLOPs and, when Full ran, how many
times less retriever and all-in compute than Full. Second table: the refresh every round
(Aligned) against each other reference the run compared it with, at every cutoff the run
gave intervals at. Third: Aligned against Incremental round by round. Reads only
results.json (a run made before an interval was kept has "—" in its cell).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from freshsid.evaluate.rolling_config import ROLLING_STRATEGIES

REFERENCE = "Incremental"
REFRESH = "Aligned"
HEAD = 10


def cell(c: dict | None) -> str:
    if not c:
        return "—"
    mark = " (ahead)" if c["low"] > 0 else " (behind)" if c["high"] < 0 else ""
    return f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]{mark}"


def ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}×"


def mean_metric(results: dict, name: str, key: str) -> float:
    return float(np.mean([r["strategies"][name]["metrics"][key] for r in results["rounds"]]))


def rows(results: dict) -> list[str]:
    summary = results["summary"]
    k = summary["k"]
    over = results.get("over_rounds", {}).get(REFERENCE, {})
    out = []
    for name in sorted(summary["strategies"], key=ROLLING_STRATEGIES.index):
        row = summary["strategies"][name]
        less = row.get("less_than_full", {})
        diffs = over.get(name, {})
        flops = f"{row['retriever_flops']:.2e}" if "retriever_flops" in row else "—"
        means = " | ".join(f"{mean_metric(results, name, key):.4f}"
                           for key in (f"recall@{HEAD}", f"ndcg@{HEAD}", f"recall@{k}", f"ndcg@{k}"))
        out.append(f"| {results['dataset']['name']} | {name} | {means} | {cell(diffs.get(f'recall@{HEAD}'))} | "
                   f"{cell(diffs.get(f'recall@{k}'))} | {cell(diffs.get(f'ndcg@{k}'))} | {flops} | "
                   f"{ratio(less.get('retriever_flops'))} | {ratio(less.get('flops'))} |")
    return out


def refresh_rows(results: dict, keys: list[str]) -> list[str]:
    """Aligned minus every other reference of the run, mean over rounds."""
    out = []
    over = results.get("over_rounds", {})
    for reference in sorted(over, key=lambda name: (name != REFERENCE, ROLLING_STRATEGIES.index(name))):
        if reference != REFRESH and REFRESH in over[reference]:
            cells = " | ".join(cell(over[reference][REFRESH].get(key)) for key in keys)
            out.append(f"| {results['dataset']['name']} | {REFRESH} − {reference} | {cells} |")
    return out


def round_rows(results: dict, keys: list[str]) -> list[str]:
    """Aligned minus Incremental in each round, at ``keys``."""
    out = []
    for record in results["rounds"]:
        cells = record.get("intervals", {}).get(REFERENCE, {}).get(REFRESH, {})
        out.append(f"| {results['dataset']['name']} | {record['round']} (part {record['scored_on']}) | "
                   + " | ".join(cell(cells.get(key)) for key in keys) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="rolling run folders (each with results.json)")
    args = parser.parse_args()
    loaded = [json.loads((run / "results.json").read_text()) for run in args.runs]
    k = loaded[0]["summary"]["k"]
    print(f"| dataset | strategy | mean R@{HEAD} | mean N@{HEAD} | mean R@{k} | mean N@{k} | "
          f"ΔR@{HEAD} vs {REFERENCE} | ΔR@{k} vs {REFERENCE} (mean over rounds) | ΔN@{k} vs {REFERENCE} | "
          "retriever FLOPs | Full ÷ this (retriever) | Full ÷ this (all-in) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for results in loaded:
        print("\n".join(rows(results)))
    cutoffs = sorted({int(key.split("@")[1]) for results in loaded for by_name in results.get("over_rounds", {}).values()
                      for cells in by_name.values() for key in cells})
    keys = [f"{m}@{c}" for c in cutoffs for m in ("recall", "ndcg")]
    print(f"\n| dataset | difference (mean over rounds) | {' | '.join(('Δ' + key[0].upper() + '@' + key.split('@')[1]) for key in keys)} |")
    print("|---|---|" + "---:|" * len(keys))
    for results in loaded:
        print("\n".join(refresh_rows(results, keys)))
    by_round = [f"recall@{HEAD}", f"recall@{k}", f"ndcg@{k}"]
    print(f"\n| dataset | round (scored on) | {' | '.join(f'{REFRESH} − {REFERENCE}, ' + key for key in by_round)} |")
    print("|---|---|" + "---:|" * len(by_round))
    for results in loaded:
        print("\n".join(round_rows(results, by_round)))


if __name__ == "__main__":
    main()
