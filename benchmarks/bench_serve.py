"""Serving figures: HTTP latency and throughput, micro-batching on and off, and batch users/s.

Makes a release from a finished experiment run (Base: the legacy table and the model
trained on it), serves it with a real uvicorn server on the loopback, and sends
``POST /recommend`` for known users at each concurrency, for each beam width, with
micro-batching on and off, all in one run so the ratios compare like with like. Then
``recommend-batch`` over a sample of users.

    python benchmarks/bench_serve.py --dataset amazon-beauty --run runs/fix-beauty --out runs/serve-beauty

Prints one JSON line per setting and a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.evaluate.stages import RunLayout
from freshsid.policies import BASE_MODEL
from freshsid.retriever.model import load_checkpoint
from freshsid.retriever.pipeline import trained_span
from freshsid.serve.batch import recommend_batch
from freshsid.serve.http import Service, serve_in_thread
from freshsid.serve.release import Releases
from freshsid.sid.refresh import CollabSids


def make_release(run: Path, dataset: str, out: Path) -> Releases:
    releases = Releases(out)
    if releases.current is not None:
        return releases
    layout = RunLayout(run)
    table = CollabSids.load(layout.path(layout.legacy)).table
    model, manifest = load_checkpoint(layout.path(layout.model(BASE_MODEL)), expected_shape=table.codebook_sizes)
    logs = load_dataset(dataset)
    split = TemporalSplit(logs, 10)
    until = int(split.bounds[trained_span(manifest).stop])
    releases.promote(releases.create(model, manifest, table, logs, until_event=until))
    return releases


async def load(base: str, users: list[str], *, concurrency: int, n: int, k: int) -> dict[str, float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def one(i: int) -> None:
            async with gate:
                started = time.perf_counter()
                response = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": k})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "rps": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--beams", default="100,500")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=20, help="requests per unit of concurrency (at least 64)")
    parser.add_argument("--batch-users", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    releases = make_release(args.run, args.dataset, args.out)
    users = releases.load_current().histories["user_id"].to_list()
    users = list(np.random.default_rng(0).permutation(users))
    rows = []
    for beam in map(int, args.beams.split(",")):
        for batching in (True, False):
            service = Service(releases, beam=beam, batching=batching)
            with serve_in_thread(service) as base:
                for concurrency in map(int, args.concurrency.split(",")):
                    n = max(64, args.requests * concurrency)
                    row = {"beam": beam, "batching": batching, "concurrency": concurrency, "requests": n,
                           **asyncio.run(load(base, users, concurrency=concurrency, n=n, k=min(100, beam)))}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    batch = recommend_batch(releases, args.out / "recs.parquet", users=users[: args.batch_users], k=100, beam=100,
                            progress=False)
    print(json.dumps({"recommend_batch_users": batch.users, "seconds": batch.seconds,
                      "users_per_s": batch.users / batch.seconds}), flush=True)
    print("\n| beam | micro-batching | concurrency | p50 ms | p99 ms | requests/s |\n|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['beam']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['rps']:.1f} |")
    print(f"\nrecommend-batch: {batch.users:,} users in {batch.seconds:.1f} s = {batch.users / batch.seconds:.1f} users/s "
          "(k = 100, beam 100)")


if __name__ == "__main__":
    main()
