"""One Markdown table for benchmarks/RESULTS.md from finished ``freshsid rolling`` runs.

    python benchmarks/summarize_rolling.py runs/rolling23-beauty runs/rolling23-toys runs/rolling23-sports

Per run and strategy: mean Recall@K and nDCG@K over the rounds (K the run's largest
cutoff), the difference from Incremental in each with its 95% interval (the mean over
rounds of the per-round paired differences; users resampled within each round), the
cumulative retriever FLOPs and, when Full ran, how many times less retriever and all-in
compute than Full. Reads only results.json (a run made before the mean-over-rounds
intervals were kept has "—" in their columns).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from freshsid.evaluate.rolling_config import ROLLING_STRATEGIES

REFERENCE = "Incremental"


def cell(c: dict | None) -> str:
    if not c:
        return "—"
    mark = " (ahead)" if c["low"] > 0 else " (behind)" if c["high"] < 0 else ""
    return f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]{mark}"


def ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}×"


def rows(results: dict) -> list[str]:
    summary = results["summary"]
    k = summary["k"]
    over = results.get("over_rounds", {}).get(REFERENCE, {})
    out = []
    for name in sorted(summary["strategies"], key=ROLLING_STRATEGIES.index):
        row = summary["strategies"][name]
        ndcg = float(np.mean([r["strategies"][name]["metrics"][f"ndcg@{k}"] for r in results["rounds"]]))
        less = row.get("less_than_full", {})
        diffs = over.get(name, {})
        flops = f"{row['retriever_flops']:.2e}" if "retriever_flops" in row else "—"
        out.append(f"| {results['dataset']['name']} | {name} | {row[f'mean_recall@{k}']:.4f} | {ndcg:.4f} | "
                   f"{cell(diffs.get(f'recall@{k}'))} | {cell(diffs.get(f'ndcg@{k}'))} | {flops} | "
                   f"{ratio(less.get('retriever_flops'))} | {ratio(less.get('flops'))} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="rolling run folders (each with results.json)")
    args = parser.parse_args()
    loaded = [json.loads((run / "results.json").read_text()) for run in args.runs]
    k = loaded[0]["summary"]["k"]
    print(f"| dataset | strategy | mean R@{k} | mean N@{k} | ΔR@{k} vs {REFERENCE} (mean over rounds) | "
          f"ΔN@{k} vs {REFERENCE} | retriever FLOPs | Full ÷ this (retriever) | Full ÷ this (all-in) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for results in loaded:
        print("\n".join(rows(results)))


if __name__ == "__main__":
    main()
