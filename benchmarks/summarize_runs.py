"""Markdown tables for benchmarks/RESULTS.md from finished ``freshsid experiment`` runs.

    python benchmarks/summarize_runs.py runs/fix-beauty runs/fix-toys runs/fix-sports
    python benchmarks/summarize_runs.py --pool runs/beauty-b0 runs/beauty-b1 runs/beauty-b2 runs/toys-b0 ...

Per run: every policy at K = 100, 200, 500 with retriever FLOPs and Full / this, the
paired comparison with FT-old over the fine-tuning seeds, the dense SASRec baselines
and Base's decay by part; then one summary row per run. Reads only results.json.

``--pool``: the runs of one dataset are builds of it (same data, another seed); per
dataset, every policy's difference from each reference with its 95% interval (paired
bootstrap over test users, nested over builds: builds resampled, then users), then the
verdicts of issue 22 at the pre-registered cell (``--metric``, default recall@500) and
its nDCG beside it (then at the other cutoffs), each with the nested, crossed (one user resample shared by every
build) and t (over build means) intervals and the sign count; a verdict is ahead or
behind only when the crossed and t intervals both exclude 0; last, the generative
policies against the dense SASRec at R@10, N@10 and R@500. Reads results.json and the
per-user scores the runs wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freshsid.evaluate.intervals import compare, interval_ks, read_scores, verdict
from freshsid.evaluate.report import headline_table, interval_sections, paired_section
from freshsid.evaluate.results import policies_of
from freshsid.policies import STALE, aligned_variants

REFERENCES = ("FT-old", "FT-old+new", "MostPop(gap)+new", "Full", "Full+FT", "SASRec")
HEAD_CELLS = ["recall@10", "ndcg@10", "recall@500"]  # the dense SASRec's bar (issue 39's goal)


def verdicts(refresh: str) -> list[tuple[str, str]]:
    """(policy, reference) pairs issue 22 asks a plain verdict for."""
    new = f"{refresh}+new"
    return [(refresh, "FT-old"), (new, "FT-old+new"), (new, "MostPop(gap)+new"), (new, "Full"), (new, "Full+FT")]


def against_dense(refresh: str) -> list[tuple[str, str]]:
    """The generative policies against the dense SASRec, the bar issue 39 sets for the head."""
    return [(policy, "SASRec") for policy in ("FT-old", "FT-old+new", f"{refresh}+new", "Full+FT")]


def _span(low: float | None, high: float | None) -> str:
    return "—" if low is None else f"[{low:+.4f}, {high:+.4f}]"


def build_means(builds: list[dict], cells: list[str]) -> dict[str, dict[str, float]]:
    """Per label of the first build, per cell: the mean over builds of its mean over users."""
    return {label: {c: sum(float(b[label][c].mean()) for b in builds) / len(builds) for c in cells}
            for label in builds[0]}


def means_table(means: dict[str, dict[str, float]], cells: list[str], first: str = "policy") -> str:
    """``means`` (label -> cell -> value) as a Markdown table, a row per label."""
    lines = [f"| {first} | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    lines += [f"| {label} | " + " | ".join(f"{row[c]:.4f}" for c in cells) + " |" for label, row in means.items()]
    return "\n".join(lines)


def verdict_table(intervals: dict, pairs: list[tuple[str, str]], cells: list[str]) -> str:
    """One row per (policy, reference) and cell: the difference, its nested, crossed and t
    intervals, the sign count and the verdict (ahead/behind only when crossed and t agree)."""
    lines = ["| comparison | cell | difference | nested | crossed | t (n−1 dof) | builds > 0 | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for policy, reference in pairs:
        for key in cells:
            cell = intervals.get(reference, {}).get(policy, {}).get(key)
            if not cell:
                lines.append(f"| {policy} − {reference} | {key} | not in these runs | | | | | |")
                continue
            lines.append(f"| {policy} − {reference} | {key} | {cell['diff']:+.4f} | {_span(cell['low'], cell['high'])} | "
                         f"{_span(cell['crossed_low'], cell['crossed_high'])} | {_span(cell['t_low'], cell['t_high'])} | "
                         f"{cell['positive']}/{cell['builds']} | {verdict(cell)} |")
    return "\n".join(lines)


def pool(runs: list[Path], metric: str, refresh: str, resamples: int, extra_ks: tuple[int, ...] = ()) -> None:
    """Per dataset, the runs as builds: intervals against every reference and the verdicts
    (at K = 100, 200, 500, the registered metric's K and ``extra_ks``)."""
    by_dataset: dict[str, list[tuple[Path, dict]]] = {}
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        by_dataset.setdefault(results["dataset"]["name"], []).append((run, results))
    for name, found in by_dataset.items():
        builds = [read_scores(run, results["policies"]) for run, results in found]
        ks = sorted(set(interval_ks(found[0][1]["config"]["ks"])) | {int(metric.split("@")[1]), *extra_ks})
        intervals = compare(builds, REFERENCES, ks, n_resamples=resamples)
        print(f"### {name}: {len(found)} build(s) ({', '.join(str(run) for run, _ in found)})\n")
        for reference, table in interval_sections({"intervals": intervals, "policies": found[0][1]["policies"]}).items():
            print(f"#### Against {reference}\n\n{table}\n")
        beside = metric.replace("recall", "ndcg") if metric.startswith("recall") else metric.replace("ndcg", "recall")
        print(f"Verdicts at {metric} (registered), {beside} beside it:\n")
        print(verdict_table(intervals, verdicts(refresh), [metric, beside]) + "\n")
        others = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg") if f"{m}@{k}" not in (metric, beside)]
        if others:
            print(f"The same comparisons at the other cutoffs (not registered):\n\n"
                  f"{verdict_table(intervals, verdicts(refresh), others)}\n")
        print(f"Against the dense SASRec at {', '.join(HEAD_CELLS)}:\n\n"
              f"{verdict_table(intervals, against_dense(refresh), HEAD_CELLS)}\n")

def cutoffs(results: dict) -> tuple[int, ...]:
    """K >= 100 where the run has them (the paper's high cutoffs), else its three largest."""
    ks = tuple(results["config"]["ks"])
    return tuple(k for k in ks if k >= 100) or ks[-3:]


def policy_table(results: dict, ks: tuple[int, ...]) -> str:
    """headline_table plus retriever FLOPs and Full / this for each policy."""
    policies = policies_of(results)  # the order headline_table writes them in
    full = next(p for p in policies.values() if p["kind"] == "full")["compute"]["retriever_flops"]
    lines = headline_table(results, ks).splitlines()
    lines[0] += " retriever FLOPs | Full / this |"
    lines[1] += "---:|---:|"
    for i, p in enumerate(policies.values(), start=2):
        flops = p["compute"]["retriever_flops"]
        lines[i] += f" {flops:.2e} | " + (f"{full / flops:.1f}× |" if p["kind"] == "finetune" else "— |")
    for name, b in results.get("baselines", {}).items():  # (runs before issue 22 kept SASRec apart)
        m = b["metrics"]
        lines.append(f"| {name} (dense baseline) | " + " | ".join(f"{m[f'{x}@{k}']:.4f}" for x in ("recall", "ndcg")
                                                                 for k in ks) + " | — | — |")
    return "\n".join(lines)


def summary_row(results: dict, k: int) -> list[str]:
    policies = results["policies"]
    r = f"recall@{k}"
    variants, with_new = aligned_variants(list(policies))
    best = max(variants, key=lambda n: policies[n]["metrics"][r])
    old, new = policies[STALE.label], policies[best]
    ahead = sum(a[r] > b[r] for a, b in zip(new.get("by_seed", [new["metrics"]]),
                                                               old.get("by_seed", [old["metrics"]])))
    full = next(p for p in policies.values() if p["kind"] == "full")
    plus = policies[with_new[0]]["metrics"][r] if with_new else float("nan")
    n_seeds = len(old.get("by_seed", [0]))
    refit = f"{policies['FT-new']['metrics'][r]:.4f}" if "FT-new" in policies else "—"  # an ablation, not always run
    return [results["dataset"]["name"], f"{old['metrics'][r]:.4f}", f"{best} {new['metrics'][r]:.4f}",
            f"{ahead}/{n_seeds}", refit, f"{plus:.4f}",
            f"{full['metrics'][r]:.4f}", f"{full['compute']['retriever_flops'] / new['compute']['retriever_flops']:.1f}×",
            f"{results['wall_seconds'] / 60:.1f} min"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--pool", action="store_true", help="pool the runs of each dataset as builds (intervals)")
    parser.add_argument("--metric", default="recall@500", help="the pre-registered cell of the verdicts")
    parser.add_argument("--refresh", default="Refresh with remap", help="the refresh row of the verdicts (its +new too)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--ks", default="", help="with --pool: cutoffs beyond 100, 200, 500 (e.g. 1,10: the head)")
    args = parser.parse_args()
    if args.pool:
        pool(args.runs, args.metric, args.refresh, args.resamples, tuple(int(k) for k in args.ks.split(",") if k))
        return
    rows, top = [], None
    for run in args.runs:
        results = json.loads((run / "results.json").read_text())
        ks = cutoffs(results)
        top = ks[-1]
        rows.append(summary_row(results, top))
        print(f"### {results['dataset']['name']} ({run})\n")
        print(policy_table(results, ks) + "\n")
        print(paired_section(results, ks) + "\n")
        decay = results["staleness"]
        print(f"Base trained on {decay['trained_on']}; R@{top} by later part: "
              + ", ".join(f"part {r['part']} {r[f'recall@{top}']:.4f}" for r in decay["by_part"]) + ".\n")
        kept = [lv["kept_after"] for lv in results["alignment"]["hungarian"]["levels"]]
        print("Codes kept after Hungarian alignment, per level: " + ", ".join(f"{k:.1%}" for k in kept) + ".\n")
    header = ["dataset", f"FT-old R@{top}", f"best FT-aligned R@{top}", "seeds ahead", f"FT-new R@{top}",
              f"FT-aligned+new R@{top}", f"Full R@{top}", "Full / FT-aligned FLOPs", "wall"]
    print("| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
