"""Study: a from-scratch retriever's quality on the validation split's last part, epoch by epoch.

A training run keeps every epoch's weights in its work folder
(``models/.<stage>.train/epoch-NNN.safetensors``). This scores chosen epochs of one or
more such runs of Base (on the legacy table of the build they belong to) on a fixed
sample of the validation split's test users, at the run's beam, beside the held-out loss
the early stopping reads (from the run's manifest) and the loss on the latest event of
each of the same held-out users alone (a next-item signal), so that they can be compared:

    python benchmarks/bench_epochs.py --dataset amazon-toys --seed 1 --users 1000 \\
        --run runs/inc-toys/b1:2,4,6,8 --run runs/conv-toys/base-e30-p3:4,8,12,16,20,25,30

Reads only the validation split's last part, never the test part.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from freshsid.config import TrainConfig, preset
from freshsid.data.registry import load_dataset
from freshsid.data.sequences import Sequences
from freshsid.data.temporal import TemporalSplit
from freshsid.evaluate.stages import RunLayout
from freshsid.metrics import recall_ndcg
from freshsid.policies import BASE_MODEL
from freshsid.recode import CollabSids
from freshsid.retriever.model import load_checkpoint
from freshsid.retriever.pipeline import recommend, sample_users, training_windows
from freshsid.retriever.train import held_out_loss, split_validation

KS = (1, 10, 100, 500)


def latest_targets(seqs: Sequences) -> tuple[Sequences, Sequences]:
    """``seqs`` split in time: each user's latest target event (in the user's last window,
    :func:`windows` lists a user's windows in time order) as its own window, and the rest
    (that event no longer a target; windows left without one dropped). What a next-item
    validation reads: the most recent event of each user, predicted from the ones before."""
    rows = np.arange(len(seqs))
    _, last = np.unique(seqs.users[::-1], return_index=True)
    last_rows = rows[::-1][last]
    length = seqs.target.shape[1]
    cols = length - 1 - np.argmax(seqs.target[last_rows, ::-1], axis=1)
    latest = np.zeros((len(last_rows), length), dtype=bool)
    latest[np.arange(len(last_rows)), cols] = True
    rest = seqs.target.copy()
    rest[last_rows, cols] = False
    keep = rest.any(axis=1)
    return (Sequences(seqs.users[last_rows], seqs.items[last_rows], latest),
            Sequences(seqs.users[keep], seqs.items[keep], rest[keep]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, default=0, help="the build seed of the runs")
    parser.add_argument("--run", action="append", required=True, help="RUN_FOLDER:EPOCH,EPOCH,... (1-based)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="cpu", help="the preset the runs were built with (its beam and protocol)")
    parser.add_argument("--loss-only", action="store_true", help="the two losses only, no decoding")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = preset(args.preset).reseeded(args.seed)
    protocol = config.protocol.validation()
    split = TemporalSplit(load_dataset(args.dataset), protocol.n_parts)
    examples = sample_users(split.examples(protocol.test, max_history=protocol.max_history), args.users)
    allowed = split.allowed_items(protocol.base)
    for spec in args.run:
        folder, epochs = spec.rsplit(":", 1)
        layout = RunLayout(Path(folder))
        table = CollabSids.load(layout.path(layout.legacy)).table
        final = layout.path(layout.model(BASE_MODEL))
        model, manifest = load_checkpoint(final, expected_shape=table.codebook_sizes)
        losses = [h["valid_loss"] for h in manifest.info["history"]]
        train = TrainConfig(**manifest.info["train"])
        seqs = training_windows(split, table, history=protocol.base, target=protocol.base,
                                max_history=model.config.max_history)
        latest, _ = latest_targets(split_validation(seqs, train.valid_fraction, train.seed)[1])
        codes = table.lookup_table(split.logs.n_items)
        for epoch in (int(e) for e in epochs.split(",")):
            model.load_state_dict(load_file(str(final.parent / f".{final.name}.train" / f"epoch-{epoch - 1:03d}.safetensors")))
            model.eval()
            metrics = {}
            if not args.loss_only:
                ranked, _ = recommend(model, table, examples.inputs, examples.users, allowed_items=allowed,
                                      top_k=max(KS), beam=config.beam)
                metrics = recall_ndcg(ranked, examples.label_indptr, examples.label_items, KS)
            print(json.dumps({"run": folder, "epochs_cap": train.epochs, "epoch": epoch,
                              "valid_loss": round(losses[epoch - 1], 4),
                              "latest_loss": round(held_out_loss(model, latest, codes, train.batch_size), 4),
                              "users": len(examples),
                              **{k: round(v, 4) for k, v in metrics.items()}}), flush=True)


if __name__ == "__main__":
    main()
