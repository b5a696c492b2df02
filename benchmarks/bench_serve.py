"""Serving figures: HTTP latency and throughput, micro-batching on and off, closed and open loop,
and batch users/s.

Makes a release from a finished experiment run (Base: the legacy table and the model
trained on it), or of a random ``cpu``-preset retriever over a Beauty-sized synthetic
trie (``--synthetic``, see ``bench_decode.py``), or takes a releases root as it is, and
serves it with the real `freshsid serve` in a subprocess on the loopback (so the load
generator does not share the server's interpreter), then sends ``POST /recommend`` for known users at each
concurrency, for each beam width, with micro-batching on and off, all in one run so the
ratios compare like with like. After each setting it reads the server's /metrics: the
mean batch size and, where the server exports them, where a request's time went
(waiting for its batch, decoding, the rest). Then ``recommend-batch`` over a sample of
users. ``--server-src`` serves another checkout's code (a before/after comparison);
``--old-src`` serves a second checkout in the same run, setting by setting after this one.

Closed loop: ``concurrency`` clients each send their next request when the last is
answered. Open loop (``--open-loop``): requests arrive as a Poisson process at the given
shares of the server's capacity (its best closed-loop requests/s in the same run) whether
or not earlier ones are answered, so queueing shows in the latency as it would in service.
The load average is printed with every row (the machine may be shared).

    python benchmarks/bench_serve.py --dataset amazon-beauty --run runs/fix-beauty --out runs/serve-beauty
    python benchmarks/bench_serve.py --releases runs/tiny/releases --out runs/serve-tiny --modes on --batch-users 0
    git archive 78e1f7c src | tar -x -C /tmp/old     # the code before the decode and serving rework
    python benchmarks/bench_serve.py --synthetic --out runs/serve-synthetic --beams 100 --modes on --batch-users 0 \
        --old-src /tmp/old/src --open-loop 0.25,0.5,0.8 --new-options=';--threads 2'

Prints one JSON line per setting and a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from freshsid.api import GenerativeRetriever
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.evaluate.stages import RunLayout
from freshsid.policies import BASE_MODEL
from freshsid.recode import CollabSids
from freshsid.retriever.pipeline import trained_span
from freshsid.serve.batch import recommend_batch
from freshsid.serve.release import Releases

SRC = Path(__file__).resolve().parents[1] / "src"


def make_release(run: Path, dataset: str, out: Path) -> Releases:
    releases = Releases(out)
    if releases.current is not None:
        return releases
    layout = RunLayout(run)
    table = CollabSids.load(layout.path(layout.legacy)).table
    base = GenerativeRetriever.load(layout.path(layout.model(BASE_MODEL)), table)
    logs = load_dataset(dataset)
    split = TemporalSplit(logs, 10)
    until = int(split.bounds[trained_span(base.manifest_).stop])
    releases.promote(releases.create(base, logs, until_event=until))
    return releases


def synthetic_release(out: Path, n_users: int = 20_000, n_events: int = 400_000) -> Releases:
    """A release of ``bench_decode``'s random ``cpu``-preset retriever and synthetic trie, over
    random logs of its items (``n_users`` users, about 20 events each); made once in ``out``."""
    from bench_decode import synthetic

    from freshsid.data.interactions import from_arrays
    from freshsid.retriever.model import save_checkpoint
    from freshsid.sid.table import SidTable

    releases = Releases(out / "releases")
    if releases.current is not None:
        return releases
    model, codes, _ = synthetic()
    rng = np.random.default_rng(0)
    logs = from_arrays(rng.integers(0, n_users, n_events).astype(str), rng.integers(0, len(codes), n_events).astype(str),
                       np.sort(rng.integers(0, 400 * 86_400, n_events)))
    item_of_id = logs.item_ids.astype(np.int64)  # dense item -> the codes row it was drawn as
    table = SidTable(items=np.arange(logs.n_items), codes=codes[item_of_id].astype(np.int32),
                     codebook_sizes=model.config.codebook_sizes, item_ids=logs.item_ids)
    save_checkpoint(out / "checkpoint", model)
    releases.promote(releases.create(GenerativeRetriever.load(out / "checkpoint", table), logs, until_event=n_events))
    return releases


async def open_loop(base: str, users: list[str], *, rate: float, n: int, k: int, seed: int = 0) -> dict[str, float]:
    """``n`` requests arriving as a Poisson process of ``rate`` a second; latency from each one's arrival."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    clock = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def one(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            response = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": k})
            response.raise_for_status()
            latencies.append(time.perf_counter() - at)

        started = time.perf_counter() + 0.1
        arrivals = np.cumsum([clock.expovariate(rate) for _ in range(n)]) + started
        await asyncio.gather(*(one(i, at) for i, at in enumerate(arrivals)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "rps": n / wall}


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
            if d.get("freshsid_decode_handoff_seconds_count"):  # the code since the decode is timed on its thread
                out["handoff_ms"] = (1000 * d["freshsid_decode_handoff_seconds_sum"]
                                     / d["freshsid_decode_handoff_seconds_count"])
            out["latency_ms"] = (1000 * d["freshsid_request_duration_seconds_sum"]
                                 / d["freshsid_request_duration_seconds_count"])
        return out
    if d.get("freshsid_batches_total"):
        return {"mean_batch": d["freshsid_batched_requests_total"] / d["freshsid_batches_total"]}
    return {}


class Server:
    """`freshsid serve` in a subprocess on a free loopback port, code from ``src``."""

    def __init__(self, root: Path, *, beam: int, batching: bool, src: Path = SRC, threads: int = 2,
                 log: Path | None = None, poll: float = 1.0, options: tuple[str, ...] = ()) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "freshsid", "--no-progress", "serve", "--releases", str(root),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--beam", str(beam),
                                      "--batching" if batching else "--no-batching", "--poll", str(poll), *options],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL if log is None else log.open("w"))
        deadline = time.monotonic() + 600  # --compile: the step compiles before the server answers
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


def measure(server: Server, users: list[str], args: argparse.Namespace, **setting) -> list[dict]:
    """Closed-loop rows at each concurrency, then open-loop rows at shares of the best closed-loop rate."""
    rows = []
    k = min(100, setting["beam"])
    for concurrency in map(int, args.concurrency.split(",")):
        n = max(64, args.requests * concurrency)
        before = scrape(server.base)
        row = {**setting, "loop": "closed", "concurrency": concurrency, "requests": n,
               **asyncio.run(load(server.base, users, concurrency=concurrency, n=n, k=k))}
        rows.append({**row, **breakdown(before, scrape(server.base)), "load": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    capacity = max(r["rps"] for r in rows)
    for share in (float(x) for x in args.open_loop.split(",") if x):
        before = scrape(server.base)
        row = {**setting, "loop": "open", "share": share, "arrival_rps": share * capacity,
               "requests": args.open_requests,
               **asyncio.run(open_loop(server.base, users, rate=share * capacity, n=args.open_requests, k=k))}
        rows.append({**row, **breakdown(before, scrape(server.base)), "load": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset")
    parser.add_argument("--run", type=Path)
    parser.add_argument("--releases", type=Path, help="serve this releases root as it is (instead of --run)")
    parser.add_argument("--synthetic", action="store_true", help="serve a random cpu-preset release (made in --out)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--beams", default="100,500")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--modes", default="on,off", help="micro-batching settings to measure")
    parser.add_argument("--requests", type=int, default=20, help="requests per unit of concurrency (at least 64)")
    parser.add_argument("--batch-users", type=int, default=2000, help="0: no recommend-batch run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server-src", type=Path, default=SRC, help="the src folder whose code serves")
    parser.add_argument("--old-src", type=Path, help="also serve this src folder's code, setting by setting (old vs new)")
    parser.add_argument("--new-options", default="", help="`freshsid serve` options for --server-src's code only, "
                        "one server per ';'-separated set: e.g. --new-options=';--threads 1;--compile'")
    parser.add_argument("--open-loop", default="", help="shares of capacity for Poisson arrivals, e.g. 0.25,0.5,0.8")
    parser.add_argument("--open-requests", type=int, default=300, help="requests per open-loop setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.releases:
        releases = Releases(args.releases)
    else:
        releases = synthetic_release(args.out) if args.synthetic else make_release(args.run, args.dataset, args.out)
    users = releases.load_current().histories["user_id"].to_list()
    users = list(np.random.default_rng(0).permutation(users))
    codes = [(f"new {options}".strip(), args.server_src, tuple(options.split()))
             for options in args.new_options.split(";")]
    codes += [("old", args.old_src, ())] if args.old_src else []
    rows = []
    for beam in map(int, args.beams.split(",")):
        for batching in (mode == "on" for mode in args.modes.split(",")):
            for code, src, options in codes:
                server = Server(releases.root, beam=beam, batching=batching, src=src, threads=args.threads,
                                options=options)
                try:
                    rows += measure(server, users, args, code=code, beam=beam, batching=batching)
                finally:
                    server.stop()
    print("\n| code | beam | micro-batching | loop | concurrency or arrivals | p50 ms | p99 ms | requests/s | mean batch "
          "| decode ms a request | hand-off ms a batch | load average |\n"
          "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "—"
        decode = f"{r['decode_ms'] / r['mean_batch']:.1f}" if "decode_ms" in r else "—"
        handoff = f"{r['handoff_ms']:.1f}" if "handoff_ms" in r else "—"
        setting = f"{r['concurrency']}" if r["loop"] == "closed" else f"{r['arrival_rps']:.1f}/s ({r['share']:.0%})"
        print(f"| {r['code']} | {r['beam']} | {'on' if r['batching'] else 'off'} | {r['loop']} | {setting} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['rps']:.1f} | {batch} | {decode} | {handoff} | "
              f"{r['load']:.2f} |")
    if args.batch_users:
        batch = recommend_batch(releases, args.out / "recs.parquet", users=users[: args.batch_users], k=100, beam=100,
                                progress=False)
        print(json.dumps({"recommend_batch_users": batch.users, "seconds": batch.seconds,
                          "users_per_s": batch.users / batch.seconds}), flush=True)
        print(f"\nrecommend-batch: {batch.users:,} users in {batch.seconds:.1f} s = "
              f"{batch.users / batch.seconds:.1f} users/s (k = 100, beam 100)")


if __name__ == "__main__":
    main()
