"""Study: fine-tune budget against quality, on the validation split.

FT-old, FT-new and FT-aligned (Hungarian) are fine-tuned from the same Base at
several budgets (epochs) with two schedules: the preset's (warm-up + cosine decay)
and a constant learning rate (the reference implementation's: 1e-4, no warm-up).
Every budget runs the whole fine-tune (early stopping off; the best epoch on the
held-out slice of gap users is kept, as in every fine-tune). Base and Full are the
reference points. Everything runs on the validation split (base [0, 7), gap
[7, 8), scored on part 8), so nothing here reads the test part.

    python benchmarks/bench_budget.py --dataset amazon-beauty --recipe stable --out runs/budget-beauty

--out may be a copy of a validation run of the same settings (``freshsid experiment
--validation``): its SIDs and Base are reused.

Writes ``budget.json`` (one row per schedule x budget x policy, and Base and Full)
and ``budget.png`` (Recall@K_max against retriever-training FLOPs) into --out, and
prints a markdown table with, per budget, Full / FT FLOPs and FT-aligned - FT-old.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from freshsid.artifacts import write_bytes_atomic, write_json_atomic
from freshsid.config import preset
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.figures import new_figure, png_bytes

STUDIED = ("FT-old", "FT-new", "FT-aligned (hungarian)")
CONSTANT_LR = 1e-4


def schedule_config(base, schedule: str, epochs: int):
    """The fine-tune config of one budget: all ``epochs`` run (patience beyond them)."""
    update = {"epochs": epochs, "patience": epochs + 1, "schedule": schedule}
    if schedule == "constant":
        update.update(lr=CONSTANT_LR, warmup_steps=0)
    return base.model_copy(update=update)


def rows_of(results: dict, schedule: str | None, epochs: int | None) -> list[dict]:
    return [{"schedule": schedule, "epochs": epochs, "policy": name, **record["metrics"],
             "retriever_flops": record["compute"]["retriever_flops"]} for name, record in results["policies"].items()]


def plot(rows: list[dict], k: int) -> bytes:
    fig, ax = new_figure()
    colors = {name: f"C{i}" for i, name in enumerate(STUDIED)}
    for schedule, style in (("cosine", "-"), ("constant", "--")):
        for name in STUDIED:
            line = sorted((r for r in rows if r["schedule"] == schedule and r["policy"] == name), key=lambda r: r["epochs"])
            ax.plot([r["retriever_flops"] for r in line], [r[f"recall@{k}"] for r in line], style, marker="o",
                    markersize=3, color=colors[name], label=f"{name}, {schedule}")
    for r in rows:
        if r["schedule"] is None:
            ax.scatter([r["retriever_flops"]], [r[f"recall@{k}"]], marker="s", color="0.3", zorder=3)
            ax.annotate(r["policy"], (r["retriever_flops"], r[f"recall@{k}"]), xytext=(5, 3), textcoords="offset points",
                        fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("retriever-training FLOPs")
    ax.set_ylabel(f"Recall@{k} (validation split)")
    ax.set_title("Fine-tune budget: quality vs compute")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def summary(rows: list[dict], k: int) -> str:
    full = next(r for r in rows if r["policy"] == "Full")
    lines = [f"| schedule | epochs | FT-old R@{k} | FT-new R@{k} | FT-aligned R@{k} | aligned − old | Full / FT FLOPs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for schedule in ("cosine", "constant"):
        for epochs in sorted({r["epochs"] for r in rows if r["schedule"] == schedule}):
            got = {r["policy"]: r for r in rows if r["schedule"] == schedule and r["epochs"] == epochs}
            old, new, aligned = (got[p][f"recall@{k}"] for p in STUDIED)
            ratio = full["retriever_flops"] / got["FT-aligned (hungarian)"]["retriever_flops"]
            lines.append(f"| {schedule} | {epochs} | {old:.4f} | {new:.4f} | {aligned:.4f} | {aligned - old:+.4f} | {ratio:.1f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", default="1,2,4,8,16", help="fine-tune budgets")
    parser.add_argument("--schedules", default="cosine,constant")
    parser.add_argument("--max-eval-users", type=int, default=None)
    parser.add_argument("--recipe", default="cold", help="refresh recipe (freshsid.recipes.RECIPES)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = preset(args.preset)
    config = config.model_copy(update={"protocol": config.protocol.validation(),
                                       "max_eval_users": args.max_eval_users or config.max_eval_users,
                                       "recipe": args.recipe, "threads": args.threads or config.threads})
    logs = load_dataset(args.dataset)
    reference = Experiment(logs, config.model_copy(update={"policies": ("Base", "Full")}), args.out)
    rows = rows_of(reference.run(), None, None)
    # Budgets in increasing order, both schedules at each: a study cut short still compares them.
    for epochs in map(int, args.epochs.split(",")):
        for schedule in args.schedules.split(","):
            study = config.model_copy(update={"policies": STUDIED, "finetune": schedule_config(config.finetune, schedule, epochs)})
            rows += rows_of(Experiment(logs, study, args.out, variant=f"{schedule}-{epochs}").run(), schedule, epochs)
            write_json_atomic(args.out / "budget.json", {"config": config.model_dump(mode="json"), "rows": rows})
    k = max(config.ks)
    write_bytes_atomic(args.out / "budget.png", plot(rows, k))
    print(summary(rows, k))


if __name__ == "__main__":
    main()
