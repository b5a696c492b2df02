"""Study: how much SID churn can a warm-start fine-tune absorb?

Starts from a finished ``freshsid experiment`` folder (legacy table, aligned
table, base checkpoint) and builds mixed tables: a chosen set of the items both
tables code take their aligned (refreshed) SID, every other item keeps its
legacy SID, the suffix level re-resolved so SIDs stay unique. Each mixed table
gets the experiment's own fine-tune (same epochs, learning rate, seeds) and is
scored like FT-aligned (items of base allowed, same test users). Share 0 is
FT-old, share 1 of ``random`` is FT-aligned.

Selections: ``random`` (a random share of the common items) and ``gap`` (the
items with an event in the gap window: the ones whose collaborative signal the
refresh saw change, and the ones the fine-tune's loss re-teaches).

    python benchmarks/bench_churn.py --dataset amazon-beauty --run runs/beauty --seeds 0,1,2

Prints one JSON line per (selection, share, seed) and writes them to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from freshsid.config import load_config
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.policies import BASE_MODEL
from freshsid.evaluate.stages import RunLayout
from freshsid.retriever import pipeline
from freshsid.sid.align import resolve_suffix
from freshsid.recode import CollabSids, Recoded
from freshsid.sid.table import SidTable


def mixed_table(legacy: SidTable, aligned: SidTable, refresh: np.ndarray) -> SidTable:
    """``aligned``'s items; the common items in ``refresh`` (item indices) and the items
    ``legacy`` lacks take their aligned SID, the others their legacy one."""
    common, in_new, in_old = np.intersect1d(aligned.items, legacy.items, return_indices=True)
    codes = aligned.codes.astype(np.int64).copy()
    keep = ~np.isin(common, refresh)
    codes[in_new[keep]] = legacy.codes[in_old[keep]]
    codes[:, -1] = resolve_suffix(codes, in_new, legacy.codes[in_old].astype(np.int64))
    return replace(aligned, codes=codes.astype(np.int32), tokenizer_state=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run", type=Path, required=True, help="a finished freshsid experiment folder")
    parser.add_argument("--method", default="hungarian")
    parser.add_argument("--shares", default="0.25,0.5", help="shares of common items for the random selection")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    config = load_config(args.run / "results.json")
    split = TemporalSplit(load_dataset(args.dataset), config.protocol.n_parts)
    layout = RunLayout(args.run)
    legacy = CollabSids.load(layout.path(layout.legacy)).table
    aligned = Recoded.load(layout.path(layout.refresh), spoken=legacy, recipe=config.how).aligned[args.method]
    common = np.intersect1d(aligned.items, legacy.items)
    gap_items = np.intersect1d(np.unique(split.logs.item[split.events(config.protocol.gap)]), common)
    rng = np.random.default_rng(0)
    order = rng.permutation(common)
    selections = [("gap", len(gap_items) / len(common), gap_items)]
    selections += [("random", share, order[: round(share * len(common))]) for share in map(float, args.shares.split(","))]
    work = args.run / "churn"
    records = []
    for name, share, refresh in selections:
        table = mixed_table(legacy, aligned, refresh)
        changed = float((table.codes_for(common) != legacy.codes_for(common)).any(axis=1).mean())
        for seed in map(int, args.seeds.split(",")):
            folder = work / f"{name}-{share:.3f}-seed{seed}"
            started = time.perf_counter()
            result = pipeline.finetune(layout.path(layout.model(BASE_MODEL)), split, table, target=config.protocol.gap, out=folder,
                                       train_config=config.finetune.model_copy(update={"seed": config.finetune.seed + seed}),
                                       show_progress=False)
            metrics = pipeline.evaluate(result.model, table, split, test=config.protocol.test, allowed=config.protocol.base,
                                        ks=config.ks, beam=config.beam, max_users=config.max_eval_users)
            record = {"selection": name, "share": round(share, 4), "sid_changed": round(changed, 4), "seed": seed,
                      **{k: round(v, 4) for k, v in metrics.items() if int(k.split("@")[1]) >= 100},
                      "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(record), flush=True)
            records.append(record)
            for path in (folder, work / f".{folder.name}.train"):  # the checkpoint and its resume state
                shutil.rmtree(path, ignore_errors=True)
    if args.out:
        args.out.write_text("\n".join(json.dumps(r) for r in records) + "\n")


if __name__ == "__main__":
    main()
