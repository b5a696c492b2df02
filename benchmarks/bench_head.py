"""Where the head (and the tail) of the ranking is lost: the beam's pruning, or the model itself.

For a Base built on the validation split (a build folder of ``bench_incremental.py`` or of
``freshsid experiment --validation``), on a sample of its validation users, Recall and
nDCG at ``--ks`` (default 1, 10) of: (a) the beam search at the run's beam; (b) the
model's own ranking of every allowed item, with nothing pruned
(:func:`freshsid.retriever.exact.exact_top_k`, which ``tests/test_exact.py`` holds equal to
a beam as wide as the catalog); (c) the dense SASRec the SIDs were coded from, exact top-K
over the same items. (b) − (a) is search error, what (b)
lacks against (c) is model error. Also: how often a label in (b)'s top K (the largest of
``--ks``) is missing from (a)'s.

    python benchmarks/bench_head.py --dataset amazon-toys --run runs/inc-toys/b1 --seed 1 --users 300
    python benchmarks/bench_head.py --dataset amazon-beauty --run runs/inc-beauty/b1 --seed 1 --ks 1,10,100,500

Reads only the validation split's last part.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from freshsid.config import preset
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.embed.collab import SASRec
from freshsid.evaluate.stages import RunLayout
from freshsid.metrics import recall_ndcg
from freshsid.policies import BASE_MODEL
from freshsid.recode import CollabSids
from freshsid.retriever.model import load_checkpoint
from freshsid.retriever.pipeline import Recommender, sample_users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run", type=Path, required=True, help="a validation build's folder")
    parser.add_argument("--seed", type=int, default=0, help="the build's seed (for its config)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ks", default="1,10", help="comma-separated cutoffs; the largest is the depth ranked")
    args = parser.parse_args()
    ks = tuple(sorted({int(k) for k in args.ks.split(",")}))
    if ks[0] < 1:
        parser.error("--ks must be positive integers")
    torch.set_num_threads(args.threads)
    config = preset("cpu").reseeded(args.seed)
    protocol = config.protocol.validation()
    split = TemporalSplit(load_dataset(args.dataset), protocol.n_parts)
    layout = RunLayout(args.run)
    legacy = CollabSids.load(layout.path(layout.legacy))
    model, _ = load_checkpoint(layout.path(layout.model(BASE_MODEL)), expected_shape=legacy.table.codebook_sizes)
    allowed = split.allowed_items(protocol.base)
    examples = sample_users(split.examples(protocol.test, max_history=protocol.max_history), args.users)
    recommender = Recommender(model, legacy.table, allowed_items=allowed)
    catalog = int(np.isin(legacy.table.items, allowed).sum())
    ranked, seconds = {}, {}
    for name, how in (("beam", dict(beam=config.beam, batch_size=32)), ("no pruning", dict(exact=True, batch_size=8))):
        started = time.perf_counter()
        ranked[name] = recommender(examples.inputs, examples.users, top_k=max(ks), **how)[0]
        seconds[name] = time.perf_counter() - started
    dense = SASRec.restore(legacy.embeddings, split.logs.n_items)
    ranked["dense SASRec"] = dense.recommend(examples.inputs, max(ks), allowed_items=allowed)
    metrics = {name: recall_ndcg(r, examples.label_indptr, examples.label_items, ks) for name, r in ranked.items()}
    owner = np.repeat(np.arange(len(examples)), np.diff(examples.label_indptr))
    found = {name: np.array([item in r[u] for u, item in zip(owner, examples.label_items)])
             for name, r in ranked.items()}
    top = max(ks)
    report = {"users": len(examples), "labels": int(len(owner)), "catalog": catalog, "beam": config.beam,
              "metrics": metrics, "decode_seconds": seconds,
              f"labels_in_top{top}_without_pruning_lost_by_the_beam": int((found["no pruning"] & ~found["beam"]).sum()),
              f"labels_in_top{top}_with_the_beam_not_without_pruning": int((found["beam"] & ~found["no pruning"]).sum()),
              f"users_whose_top{top}_differs": int(sum(set(a) != set(b)
                                                       for a, b in zip(ranked["beam"], ranked["no pruning"])))}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
