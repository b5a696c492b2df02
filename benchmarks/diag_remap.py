"""What the remap recipes' carried embeddings are worth before any fine-tuning step.

    python benchmarks/diag_remap.py --dataset amazon-beauty runs/val/beauty-remap-3

Reads a finished ``freshsid experiment`` run (read only: its stage cache is not used)
and scores its Base retriever on the run's test part, decoding over the items the
legacy table codes, three ways: through the legacy table (Base as the run scored it),
through the Hungarian-aligned refreshed table with the checkpoint's rows unchanged
(what FT-aligned starts from without remap), and through that table after remapping
every semantic level (what `remap-3`'s FT-aligned starts from). Writes
``diag_remap.json`` into the run folder and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from freshsid.config import load_config
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.evaluate.stages import RunLayout
from freshsid.policies import BASE_MODEL
from freshsid.retriever import pipeline
from freshsid.retriever.model import load_checkpoint
from freshsid.retriever.remap import remap_code_embeddings
from freshsid.recode import CollabSids, Recoded

KEYS = [f"{metric}@{k}" for metric in ("recall", "ndcg") for k in (100, 200, 500)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished experiment run folder (its results.json names the config)")
    parser.add_argument("--dataset", required=True, help="the dataset the run was made on, e.g. amazon-beauty")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.run / "results.json")
    layout, protocol = RunLayout(args.run), cfg.protocol
    split = TemporalSplit(load_dataset(args.dataset), protocol.n_parts)
    legacy = CollabSids.load(layout.path(layout.legacy)).table
    aligned = Recoded.load(layout.path(layout.refresh), spoken=legacy, recipe=cfg.how).table
    base, _ = load_checkpoint(layout.path(layout.model(BASE_MODEL)), expected_shape=legacy.codebook_sizes)
    remapped = copy.deepcopy(base)
    remap_code_embeddings(remapped, legacy, aligned, aligned.n_levels)
    scores = {}
    for name, model, table in (("Base, legacy table", base, legacy), ("Base, aligned table, rows as they are", base, aligned),
                               ("Base, aligned table, remapped", remapped, aligned)):
        scores[name] = pipeline.evaluate(model, table, split, test=protocol.test, allowed=protocol.base, ks=(100, 200, 500),
                                         beam=cfg.beam, max_users=cfg.max_eval_users)
    (args.run / "diag_remap.json").write_text(json.dumps(scores, indent=1))
    print("| start of the fine-tune | " + " | ".join(KEYS) + " |")
    for name, metrics in scores.items():
        print(f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
