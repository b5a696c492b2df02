"""What the paired bootstrap costs at the finals' sizes, and whether it reads an effect of 0.005.

    PYTHONPATH=src python benchmarks/bench_intervals.py

Per-user scores are simulated with the spread the review measured on Beauty (per-user
R@500 with a standard deviation near 0.35, policies correlated user by user); the
experiment's policy count (16) against its two references, K = 100, 200, 500, Recall
and nDCG, 1,000 resamples. Cases: one build of Beauty's 5,517 test users, three builds
of Sports' 9,320. Prints the wall time of :func:`freshsid.evaluate.intervals.compare`
and the interval of a policy 0.005 ahead of its reference.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from freshsid.evaluate.intervals import compare

POLICIES = 16
KEYS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (100, 200, 500)]


def build(n_users: int, seed: int) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    shared = rng.beta(0.6, 1.4, n_users)  # what every policy gets for a user: mean ~0.3, sd ~0.28
    frames = {}
    for i in range(POLICIES):
        label = ["FT-old", "FT-old+new", "ahead by 0.005"][i] if i < 3 else f"policy {i}"
        shift = 0.005 if i == 2 else 0.0
        user = np.clip(shared + rng.normal(0, 0.15, n_users) + shift, 0, 1)  # per-user sd ~0.33
        frames[label] = pl.DataFrame({"user": np.arange(n_users), **{k: user for k in KEYS}})
    return frames


def main() -> None:
    for name, builds in (("Beauty, 1 build x 5,517 users", [build(5517, 0)]),
                         ("Sports, 3 builds x 9,320 users", [build(9320, s) for s in range(3)])):
        started = time.perf_counter()
        out = compare(builds, ("FT-old", "FT-old+new"), (100, 200, 500))
        seconds = time.perf_counter() - started
        cell = out["FT-old"]["ahead by 0.005"]["recall@500"]
        sd = float(np.std(builds[0]["FT-old"]["recall@500"].to_numpy()))
        print(f"{name}: {seconds:.1f} s for {sum(len(r) for r in out.values())} comparisons x {len(KEYS)} cells; "
              f"per-user sd {sd:.2f}; a +0.005 shift reads {cell['diff']:+.4f} [{cell['low']:+.4f}, {cell['high']:+.4f}]")


if __name__ == "__main__":
    main()
