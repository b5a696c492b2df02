"""Choose the demo's synthetic drift and tiny-preset training on the synthetic validation split.

Each setting (synthetic-catalog knobs and the tiny fit / fine-tune epochs) runs Base,
FT-old, FT-new, FT-aligned (hungarian) and Full on the validation split (base [0, 7),
gap [7, 8), scored on part 8) and prints one row: Base's Recall@K_max on part 7 and
part 8 (its decay), and each policy's Recall@K_max. The demo wants Base decaying, FT-new
collapsing and FT-aligned recovering it; part 9 of the catalog is never read.

    python benchmarks/tune_demo.py --out runs/tune-demo
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from freshsid.config import preset
from freshsid.data.registry import synthetic_dataset
from freshsid.data.synthetic import SyntheticConfig
from freshsid.evaluate.experiment import Experiment

POLICIES = ("Base", "FT-old", "FT-new", "FT-aligned (hungarian)", "Full")
GRID = {
    "migrating_share": (0.15, 0.4),
    "user_drift_share": (0.3, 0.7),
    "fit_epochs": (2, 6),
}


def run(setting: dict, out: Path) -> dict:
    data = SyntheticConfig(migrating_share=setting["migrating_share"], user_drift_share=setting["user_drift_share"])
    config = preset("tiny", policies=POLICIES)
    config = config.model_copy(update={"protocol": config.protocol.validation(),
                                       "fit": config.fit.model_copy(update={"epochs": setting["fit_epochs"]})})
    experiment = Experiment(synthetic_dataset(data), config, out, show_progress=False)
    experiment.log = lambda _: None
    results = experiment.run()
    k = max(config.ks)
    decay = {row["part"]: row[f"recall@{k}"] for row in results["staleness"]["by_part"]}
    return {**setting, "k": k, "base_by_part": decay,
            **{name: results["policies"][name]["metrics"][f"recall@{k}"] for name in POLICIES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    names = list(GRID)
    print("| " + " | ".join(names) + " | Base part 7 | Base part 8 | " + " | ".join(POLICIES) + " |")
    print("|" + "---:|" * (len(names) + 2 + len(POLICIES)))
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(names, values))
        row = run(setting, args.out / "-".join(f"{n}={v}" for n, v in setting.items()))
        rows.append(row)
        parts = row["base_by_part"]
        print("| " + " | ".join(str(v) for v in values) + f" | {parts[7]:.4f} | {parts[8]:.4f} | "
              + " | ".join(f"{row[n]:.4f}" for n in POLICIES) + " |", flush=True)
    (args.out / "tune.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
