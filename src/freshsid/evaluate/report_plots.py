"""The experiment report's files: ``report.md`` (rendered by :mod:`freshsid.evaluate.report`)
and its plots, recall and nDCG at each K by policy and recall against retriever compute."""

from __future__ import annotations

from pathlib import Path

from freshsid.artifacts import write_bytes_atomic
from freshsid.evaluate.figures import label_points, new_figure, png_bytes
from freshsid.evaluate.report import METRIC_TITLES, compute_of, metric_rows, render_markdown
from freshsid.evaluate.results import ks_of, metric_of, policies_of


def _colors(results: dict) -> dict[str, str]:
    """One colour per policy, by display order, shared by every plot."""
    return {name: f"C{i % 10}" for i, name in enumerate(policies_of(results))}


def _metric_plot(results: dict, metric: str) -> bytes | None:
    rows = [(label, m, pol) for label, m, pol in metric_rows(results) if ks_of([m], metric)]
    if not rows:
        return None
    fig, ax = new_figure()
    all_ks = ks_of([m for _, m, _ in rows], metric)
    colors = _colors(results)
    for label, metrics, is_policy in rows:
        ks = [k for k in ks_of([metrics], metric) if metric_of(metrics, metric, k) is not None]
        # Dense baselines are context, not contenders: grey and dashed.
        style = {"marker": "o", "color": colors[label]} if is_policy else {"marker": "x", "ls": "--", "color": "0.45"}
        ax.plot(ks, [metric_of(metrics, metric, k) for k in ks], label=label, markersize=4, linewidth=1.6, **style)
    ax.set_xscale("log")
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel(METRIC_TITLES[metric])
    ax.set_title(f"{METRIC_TITLES[metric]} by policy: {(results.get('dataset') or {}).get('name', '')}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def _compute_plot(results: dict) -> bytes | None:
    policies = policies_of(results)
    k = max(ks_of([p.get("metrics") or {} for p in policies.values()], "recall"), default=None)
    colors, points = _colors(results), []
    for name, p in policies.items():
        x, y = compute_of(p, "retriever_flops"), metric_of(p.get("metrics") or {}, "recall", k) if k else None
        if x is not None and x > 0 and y is not None:  # a log axis cannot show zero compute
            points.append((name, x, y, colors[name]))
    if not points:
        return None
    fig, ax = new_figure()
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    for name, x, y, color in points:
        ax.scatter([x], [y], color=color, s=36, zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 2, max(xs) * 12)  # room on the right for the labels
    pad = max((max(ys) - min(ys)) * 0.15, max(ys) * 0.02, 1e-3)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_xlabel("retriever-training FLOPs")
    ax.set_ylabel(f"Recall@{k}")
    ax.set_title(f"Recall@{k} vs retriever compute: {(results.get('dataset') or {}).get('name', '')}")
    ax.grid(True, alpha=0.3, which="both")
    label_points(fig, ax, points)
    return png_bytes(fig)


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """Write ``report.md`` and the PNG plots into ``out_dir``; return the paths written.

    A plot whose data is absent from ``results`` (no metrics, no compute) is skipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "report.md": render_markdown(results).encode(),
        "recall_at_k.png": _metric_plot(results, "recall"),
        "ndcg_at_k.png": _metric_plot(results, "ndcg"),
        "quality_vs_compute.png": _compute_plot(results),
    }
    written = []
    for name, data in outputs.items():
        if data is not None:
            write_bytes_atomic(out_dir / name, data)
            written.append(out_dir / name)
    return written
