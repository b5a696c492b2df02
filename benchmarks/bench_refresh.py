"""`freshsid refresh` against a full rebuild, on the data of an experiment's Full policy.

The release is the experiment's Base (trained on base, parts [0, 8)); the refresh gets
the logs up to the end of the gap (parts [0, 9)), so it learns from the gap exactly as
the experiment's policies do, and Full (SASRec, tokenizer and retriever rebuilt on
[0, 9)) is the full rebuild on the same data. Compute is read from the refresh's
outcome and from Full's record in the run's results.json.

    python benchmarks/bench_refresh.py --dataset amazon-beauty --run runs/fix-beauty --out runs/refresh-beauty
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from freshsid.api import GenerativeRetriever
from freshsid.config import load_config
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.evaluate.stages import RunLayout
from freshsid.policies import BASE_MODEL
from freshsid.recode import CollabSids
from freshsid.serve.refresh import refresh
from freshsid.serve.release import Releases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    results = json.loads((args.run / "results.json").read_text())
    config = load_config(args.run / "results.json")
    protocol = config.protocol
    logs = load_dataset(args.dataset)
    split = TemporalSplit(logs, protocol.n_parts)
    layout = RunLayout(args.run)
    table = CollabSids.load(layout.path(layout.legacy)).table
    base = GenerativeRetriever.load(layout.path(layout.model(BASE_MODEL)), table)
    releases = Releases(args.out)
    if releases.current is None:
        releases.promote(releases.create(base, logs, until_event=int(split.bounds[protocol.base.stop])))
    end = int(split.bounds[protocol.gap.stop])
    upto_gap = replace(logs, user=logs.user[:end], item=logs.item[:end], ts=logs.ts[:end])
    started = time.perf_counter()
    outcome = refresh(releases, upto_gap, config, progress=False)
    wall = time.perf_counter() - started

    full = results["policies"]["Full"]["compute"]
    full_flops = full["retriever_flops"] + full["embedding_flops"] + full["tokenizer_flops"]
    full_seconds = full["retriever_seconds"] + full["embedding_seconds"] + full["tokenizer_seconds"]
    c = outcome.compute
    refresh_flops = c["retriever_flops"] + c["embedding_flops"] + c["tokenizer_flops"]
    record = {"release": outcome.release_id, "refresh_wall_s": wall, "refresh_flops": refresh_flops,
              "refresh_retriever_flops": c["retriever_flops"], "full_flops": full_flops,
              "full_retriever_flops": full["retriever_flops"], "full_train_seconds": full_seconds,
              "gate": {outcome.metric: [outcome.current_score, outcome.candidate_score]},
              "codes_kept": outcome.codes_kept, "items_added": outcome.items_added}
    print(json.dumps(record, indent=2))
    print(f"\nrefresh: {wall:.0f} s wall, {refresh_flops:.3e} FLOPs ({c['retriever_flops']:.3e} retriever); "
          f"full rebuild: {full_seconds:.0f} s of training, {full_flops:.3e} FLOPs ({full['retriever_flops']:.3e} "
          f"retriever): {full_flops / refresh_flops:.1f}x the FLOPs, "
          f"{full['retriever_flops'] / c['retriever_flops']:.1f}x the retriever FLOPs")


if __name__ == "__main__":
    main()
