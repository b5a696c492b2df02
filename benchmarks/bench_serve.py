"""Serving figures: HTTP latency and throughput, micro-batching on and off, and batch users/s.

Makes a release from a finished experiment run (Base: the legacy table and the model
trained on it), or takes a releases root as it is, and serves it with the real
`freshsid serve` in a subprocess on the loopback (so the load generator does not share
the server's interpreter), then sends ``POST /recommend`` for known users at each
concurrency, for each beam width, with micro-batching on and off, all in one run so the
ratios compare like with like. After each setting it reads the server's /metrics: the
mean batch size and, where the server exports them, where a request's time went
(waiting for its batch, decoding, the rest). Then ``recommend-batch`` over a sample of
users. ``--server-src`` serves another checkout's code (a before/after comparison).

    python benchmarks/bench_serve.py --dataset amazon-beauty --run runs/fix-beauty --out runs/serve-beauty
    python benchmarks/bench_serve.py --releases runs/tiny/releases --out runs/serve-tiny --modes on --batch-users 0

Prints one JSON line per setting and a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
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
from freshsid.serve.release import Releases
from freshsid.recode import CollabSids

SRC = Path(__file__).resolve().parents[1] / "src"


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
    dropped = 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal dropped
            async with gate:
                started = time.perf_counter()
                for attempt in range(2):  # a pooled connection the server closed as it was reused: counted, retried
                    try:
                        response = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": k})
                        break
                    except httpx.TransportError:
                        if attempt:
                            raise
                        dropped += 1
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one(i) for i in range(min(n, 2 * concurrency))))  # warm-up: connections, caches
        latencies.clear()
        dropped = 0
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "rps": n / wall,
            "dropped_connections": dropped}


def scrape(base: str) -> dict[str, float]:
    """Sums and counts of the server's batching series (either /metrics format: before and after issue 25)."""
    text = httpx.get(f"{base}/metrics", timeout=60).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(freshsid_[a-z_]+?)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m and m.group(1).endswith(("_sum", "_count", "batches_total", "batched_requests_total")):
            values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(2))
    return values


def breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean batch size, and per request the mean time waiting for its batch and decoding it (ms)."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    if d.get("freshsid_batch_size_count"):
        out = {"mean_batch": d["freshsid_batch_size_sum"] / d["freshsid_batch_size_count"]}
        if d.get("freshsid_queue_wait_seconds_count"):
            out["queue_ms"] = 1000 * d["freshsid_queue_wait_seconds_sum"] / d["freshsid_queue_wait_seconds_count"]
            out["decode_ms"] = 1000 * d["freshsid_decode_seconds_sum"] / d["freshsid_decode_seconds_count"]
            out["latency_ms"] = (1000 * d["freshsid_request_duration_seconds_sum"]
                                 / d["freshsid_request_duration_seconds_count"])
        return out
    if d.get("freshsid_batches_total"):
        return {"mean_batch": d["freshsid_batched_requests_total"] / d["freshsid_batches_total"]}
    return {}


class Server:
    """`freshsid serve` in a subprocess on a free loopback port, code from ``src``."""

    def __init__(self, root: Path, *, beam: int, batching: bool, src: Path = SRC, threads: int = 2,
                 log: Path | None = None, poll: float = 1.0) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "freshsid", "--no-progress", "serve", "--releases", str(root),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--beam", str(beam),
                                      "--batching" if batching else "--no-batching", "--poll", str(poll)],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL if log is None else log.open("w"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset")
    parser.add_argument("--run", type=Path)
    parser.add_argument("--releases", type=Path, help="serve this releases root as it is (instead of --run)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--beams", default="100,500")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--modes", default="on,off", help="micro-batching settings to measure")
    parser.add_argument("--requests", type=int, default=20, help="requests per unit of concurrency (at least 64)")
    parser.add_argument("--batch-users", type=int, default=2000, help="0: no recommend-batch run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server-src", type=Path, default=SRC, help="the src folder whose code serves")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    releases = Releases(args.releases) if args.releases else make_release(args.run, args.dataset, args.out)
    users = releases.load_current().histories["user_id"].to_list()
    users = list(np.random.default_rng(0).permutation(users))
    rows = []
    for beam in map(int, args.beams.split(",")):
        for batching in (mode == "on" for mode in args.modes.split(",")):
            server = Server(releases.root, beam=beam, batching=batching, src=args.server_src, threads=args.threads)
            try:
                for concurrency in map(int, args.concurrency.split(",")):
                    n = max(64, args.requests * concurrency)
                    before = scrape(server.base)
                    row = {"beam": beam, "batching": batching, "concurrency": concurrency, "requests": n,
                           **asyncio.run(load(server.base, users, concurrency=concurrency, n=n, k=min(100, beam)))}
                    row.update(breakdown(before, scrape(server.base)))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                server.stop()
    print("\n| beam | micro-batching | concurrency | p50 ms | p99 ms | requests/s | mean batch |\n"
          "|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "—"
        print(f"| {r['beam']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['rps']:.1f} | {batch} |")
    if args.batch_users:
        batch = recommend_batch(releases, args.out / "recs.parquet", users=users[: args.batch_users], k=100, beam=100,
                                progress=False)
        print(json.dumps({"recommend_batch_users": batch.users, "seconds": batch.seconds,
                          "users_per_s": batch.users / batch.seconds}), flush=True)
        print(f"\nrecommend-batch: {batch.users:,} users in {batch.seconds:.1f} s = "
              f"{batch.users / batch.seconds:.1f} users/s (k = 100, beam 100)")


if __name__ == "__main__":
    main()
