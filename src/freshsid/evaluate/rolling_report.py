"""The rolling run's report: ``report.md`` (per round and strategy, the summary, the
paired differences) and its three plots, from the results :class:`~freshsid.evaluate.rolling.Rolling`
writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freshsid.artifacts import write_bytes_atomic
from freshsid.evaluate.rolling_config import ROLLING_STRATEGIES
from freshsid.evaluate.figures import new_figure, png_bytes



def write_report(results: dict[str, Any], out: Path) -> None:
    ks = results["config"]["run"]["ks"]
    shown = [k for k in ks if k >= 100] or list(ks[-2:])
    write_bytes_atomic(out / "recall_by_round.png", _recall_plot(results, (shown[0], shown[-1])))
    write_bytes_atomic(out / "compute_vs_quality.png", _compute_plot(results))
    write_bytes_atomic(out / "codes_over_rounds.png", _codes_plot(results))
    (out / "report.md").write_text(report_markdown(results, shown))


def report_markdown(results: dict[str, Any], ks: list[int]) -> str:
    summary, trigger = results["summary"], results["trigger"]
    k = summary["k"]
    names = list(results["rounds"][0]["strategies"])
    lines = [f"# freshsid rolling refresh: {results['dataset']['name']}", "",
             f"{results['dataset']['n_parts']} parts; initial build on [0, {results['config']['initial']}); "
             f"rounds {results['rounds'][0]['round']}–{results['rounds'][-1]['round']} (round r uses part r, is scored "
             f"on part r+1). Wall time {results['wall_seconds'] / 60:.1f} min"
             + (f"; its stages took {sum(results['stage_seconds'].values()) / 60:.1f} min to build, in this run or "
                "an earlier one it resumed" if results.get("stage_seconds") else "") + ".", "", "## Verdict", ""]
    rows = summary["strategies"]
    lines.append(f"Best mean Recall@{k}: **{summary['best_quality']}** ({rows[summary['best_quality']][f'mean_recall@{k}']:.4f}). "
                 + (f"Best quality gained over Frozen per FLOP: **{summary['best_per_flop']}**. "
                    if summary.get("best_per_flop") else "")
                 + (f"Triggered: mean Recall@{k} {rows['Triggered'][f'mean_recall@{k}']:.4f} for {rows['Triggered']['flops']:.2e} "
                    f"FLOPs (signal {trigger['signal']}, threshold {trigger['threshold']} = mean over the first "
                    f"{trigger['calibration_rounds']} rounds)." if "Triggered" in rows else ""))
    full = "less_than_full" in rows[names[0]]
    lines += ["", f"| strategy | mean Recall@{k} | FLOPs (all rounds) | retriever FLOPs | seconds | gain over Frozen per PFLOP |"
              + (" Full ÷ this, retriever FLOPs | Full ÷ this, all FLOPs |" if full else ""),
              "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if full else "")]
    show = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
    for name in names:
        row = rows[name]
        cells = [f"{row[f'mean_recall@{k}']:.4f}", f"{row['flops']:.2e}", show(row.get("retriever_flops"), ".2e"),
                 f"{row['seconds']:.0f}", show(row.get("gain_per_pflop"), "+.4f")]
        if full:
            cells += [show(row["less_than_full"][key], ".1f") for key in ("retriever_flops", "flops")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    span = f"{results['rounds'][0]['round']}–{results['rounds'][-1]['round']}"
    if results.get("over_rounds"):
        lines += _interval_lines(f"## Mean over rounds {span}: paired differences", [(span, results["over_rounds"])])
    for metric in ("recall", "ndcg"):
        lines += ["", f"## {metric} by round", "", "| round | scored on | " + " | ".join(
            f"{n} @{kk}" for n in names for kk in ks) + " |", "|---:|---:|" + "---:|" * (len(names) * len(ks))]
        for rec in results["rounds"]:
            cells = [f"{rec['strategies'][n]['metrics'][f'{metric}@{kk}']:.4f}" for n in names for kk in ks]
            lines.append(f"| {rec['round']} | {rec['scored_on']} | " + " | ".join(cells) + " |")
    lines += _interval_lines("## Paired differences by round",
                             [(str(rec["round"]), rec["intervals"]) for rec in results["rounds"] if rec.get("intervals")])
    lines += ["", "## Codes", "", "| round | strategy | kept vs previous | kept since start | utilisation | items | added |"
              " duplicates |", "|---:|---|---|---|---|---:|---:|---:|"]
    fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    for rec in results["rounds"]:
        for n in _coded(names):
            e = rec["strategies"][n]
            lines.append(f"| {rec['round']} | {n} | {fmt(e['kept'])} | {fmt(e['kept_since_start'])} | "
                         f"{fmt(e['utilisation'])} | {e['items']:,} | {e['items_added']:,} | {e['duplicate_sids']} |")
    if any("signals" in rec for rec in results["rounds"]):
        lines += ["", "## Trigger", "", "| round | churn | unseen | decay | threshold | action |", "|---:|---:|---:|---:|---:|---|"]
        for rec in results["rounds"]:
            s = rec.get("signals")
            if s:
                show = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
                lines.append(f"| {rec['round']} | {show(s['churn'])} | {show(s['unseen'])} | {show(s['decay'])} | "
                             f"{'calibrating' if s['calibrating'] else show(s['threshold'])} | {_action(s)} |")
    lines += ["", "Plots: recall_by_round.png, compute_vs_quality.png, codes_over_rounds.png.", ""]
    return "\n".join(lines)


def _action(signals: dict[str, Any]) -> str:
    """What Triggered did (runs made before it could code new items fine-tuned when it did not refresh)."""
    return signals.get("action") or ("refresh" if signals["refreshed"] else "fine-tune")


def _interval_lines(title: str, blocks: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per (rounds, intervals) block, every strategy minus each reference at the largest
    cutoff, with its 95% paired interval over test users (* where it excludes 0)."""
    if not blocks:
        return []
    first = blocks[0][1]
    k = max(int(key.split("@")[1]) for rows in first.values() for cells in rows.values() for key in cells)
    lines = ["", f"{title} (Recall@{k} and nDCG@{k}, 95% bootstrap interval over users)", "",
             "| round | strategy | reference | ΔRecall | ΔnDCG |", "|---:|---|---|---|---|"]
    cell = lambda c: f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]" + (  # noqa: E731
        "*" if c["low"] > 0 or c["high"] < 0 else "")
    for label, intervals in blocks:
        for ref, rows in intervals.items():
            for name, cells in rows.items():
                lines.append(f"| {label} | {name} | {ref} | {cell(cells[f'recall@{k}'])} | {cell(cells[f'ndcg@{k}'])} |")
    return lines


def _coded(names: list[str]) -> list[str]:
    """The strategies that serve SIDs (MostPop serves none)."""
    return [n for n in names if n != "MostPop"]


def _colour(strategy: str) -> str:
    """One colour per strategy in every plot (results.json stores them sorted by name)."""
    return f"C{ROLLING_STRATEGIES.index(strategy)}"


def _recall_plot(results: dict[str, Any], ks: tuple[int, int]) -> bytes:
    fig, _ = new_figure(10, 4)
    fig.clear()
    axes = fig.subplots(1, 2)
    rounds = [rec["scored_on"] for rec in results["rounds"]]
    for ax, kk in zip(axes, ks):
        for name in results["rounds"][0]["strategies"]:
            ax.plot(rounds, [rec["strategies"][name]["metrics"][f"recall@{kk}"] for rec in results["rounds"]],
                    marker="o", label=name, color=_colour(name))
        ax.set_xticks(rounds)
        ax.set_xlabel("scored on part")
        ax.set_ylabel(f"Recall@{kk}")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Rolling refresh: quality per round")
    return png_bytes(fig)


def _compute_plot(results: dict[str, Any]) -> bytes:
    fig, ax = new_figure()
    summary = results["summary"]
    metric = f"mean_recall@{summary['k']}"
    for name, row in summary["strategies"].items():
        if row["flops"] > 0:
            ax.scatter([row["flops"]], [row[metric]], color=_colour(name))
            ax.annotate(name, (row["flops"], row[metric]), xytext=(4, 3), textcoords="offset points", fontsize=8)
        else:  # no compute has no place on a log axis: a reference line
            ax.axhline(row[metric], color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"{name} (no compute)", (0.01, row[metric]), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel("cumulative FLOPs over the rounds")
    ax.set_ylabel(f"mean Recall@{summary['k']}")
    ax.grid(True, alpha=0.3, which="both")
    return png_bytes(fig)


def _codes_plot(results: dict[str, Any]) -> bytes:
    fig, _ = new_figure(10, 4)
    fig.clear()
    axes = fig.subplots(1, 2)
    rounds = [rec["round"] for rec in results["rounds"]]
    for name in _coded(list(results["rounds"][0]["strategies"])):
        entries = [rec["strategies"][name] for rec in results["rounds"]]
        for level in range(len(entries[0]["utilisation"])):
            style = dict(marker="o", markersize=3, label=f"{name} L{level}")
            axes[0].plot(rounds, [e["kept_since_start"][level] for e in entries], **style)
            axes[1].plot(rounds, [e["utilisation"][level] for e in entries], **style)
    axes[0].set_ylabel("share of initial codes still in place")
    axes[1].set_ylabel("codebook utilisation")
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    return png_bytes(fig)
