"""Study: the open-loop latency of an ideal micro-batching server, from a measured decode cost.

Requests arrive as a Poisson process. One decoder takes every request waiting the moment it
is free (no wait for company, nothing else to do) and decodes them as one batch, which costs
``b * per_user(b)`` ms for a batch of ``b``: ``per_user`` is interpolated linearly between the
points given (``bench_decode.py`` measures them), and constant past the last. A request's
latency is its wait plus its batch's decode plus a fixed overhead outside the decode (reading,
parsing, answering). No real server does better with that decode, so a p99 this model puts above
a goal says the goal needs a cheaper decode, not a better server.

    python benchmarks/queue_bound.py --per-user 1:11.40,8:6.27,14:5.95,32:6.02 --rates 35,70,113 \
        --overhead-ms 3.5 --unloaded-p50-ms 16
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def batch_cost(points: list[tuple[int, float]], batch: int) -> float:
    """ms to decode ``batch`` users, from (users, ms a user) points sorted by users."""
    users = [u for u, _ in points]
    per_user = float(np.interp(batch, users, [ms for _, ms in points]))
    return batch * per_user


def simulate(rate: float, points: list[tuple[int, float]], *, requests: int, overhead_ms: float,
             seed: int) -> dict:
    """Latencies (ms) of ``requests`` Poisson arrivals at ``rate`` per second through the ideal batcher."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1000.0 / rate, size=requests))
    latency = np.empty(requests)
    free, first, batches = 0.0, 0, []
    while first < requests:
        start = max(free, arrivals[first])
        last = int(np.searchsorted(arrivals, start, side="right"))  # everyone arrived by then
        free = start + batch_cost(points, last - first)
        latency[first:last] = free - arrivals[first:last] + overhead_ms
        batches.append(last - first)
        first = last
    busy = sum(batch_cost(points, b) for b in batches) / arrivals[-1]
    return {"rate": rate, "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
            "mean_batch": float(np.mean(batches)), "decoder_busy": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-user", required=True, help="users:ms-a-user points, e.g. 1:11.4,8:6.27,32:6.02")
    parser.add_argument("--rates", required=True, help="arrivals a second, comma-separated")
    parser.add_argument("--overhead-ms", type=float, default=0.0, help="a request's time outside the decode")
    parser.add_argument("--unloaded-p50-ms", type=float, help="the measured p50 alone, to state p99 against 3x it")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    points = sorted((int(u), float(ms)) for u, ms in (p.split(":") for p in args.per_user.split(",")))
    print("| arrivals/s | decoder busy | mean batch | p50 ms | p99 ms | p99 / unloaded p50 |\n|---:|---:|---:|---:|---:|---:|")
    for rate in (float(r) for r in args.rates.split(",")):
        row = simulate(rate, points, requests=args.requests, overhead_ms=args.overhead_ms, seed=args.seed)
        ratio = f"{row['p99_ms'] / args.unloaded_p50_ms:.2f}" if args.unloaded_p50_ms else "-"
        print(f"| {rate:g} | {row['decoder_busy']:.0%} | {row['mean_batch']:.2f} | {row['p50_ms']:.1f} | "
              f"{row['p99_ms']:.1f} | {ratio} |")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
