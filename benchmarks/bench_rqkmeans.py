"""Benchmark: RQ-KMeans fit + transform on clustered random vectors.

Default: 1,000,000 x 64 float32, 3 levels x 256 codes. Goal: under 5 minutes
and under 4 GB peak resident memory on 2 CPU cores. Prints one JSON line.

    python benchmarks/bench_rqkmeans.py            # full size
    python benchmarks/bench_rqkmeans.py --n 100000 # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np

from freshsid.sid.collisions import collision_stats
from freshsid.sid.rqkmeans import RQKMeans

GOAL_SECONDS = 300.0
GOAL_PEAK_GB = 4.0


def clustered_vectors(n: int, dim: int, *, n_centers: int, seed: int) -> np.ndarray:
    """(n, dim) float32 Gaussian blobs, generated in blocks so no float64 copy of the whole set exists."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.0, size=(n_centers, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    block = 100_000
    for start in range(0, n, block):
        rows = min(block, n - start)
        out[start : start + rows] = centers[rng.integers(0, n_centers, rows)]
        out[start : start + rows] += rng.standard_normal((rows, dim), dtype=np.float32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="number of vectors")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--balanced", action="store_true", help="size-balanced assignment (much slower at 1M)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X = clustered_vectors(args.n, args.dim, n_centers=1000, seed=args.seed)
    model = RQKMeans(
        n_levels=args.levels,
        codebook_size=args.codebook_size,
        n_iter=args.n_iter,
        balanced=args.balanced,
        seed=args.seed,
    )
    start = time.perf_counter()
    model.fit(X)
    fitted = time.perf_counter()
    codes = model.transform(X)
    done = time.perf_counter()
    stats = collision_stats(codes, args.codebook_size)
    # ru_maxrss is in KiB on Linux; it covers the data, the fit and the transform.
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    record = {
        "bench": "rqkmeans",
        "n": args.n,
        "dim": args.dim,
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "n_iter": args.n_iter,
        "balanced": args.balanced,
        "fit_seconds": round(fitted - start, 2),
        "transform_seconds": round(done - fitted, 2),
        "wall_seconds": round(done - start, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "final_level_mse": round(model.inertia_history_[-1][-1], 4),
        "collision_rate": round(stats["collision_rate"], 4),
        "utilisation": [round(u, 3) for u in stats["utilisation"]],
        "within_goal": (done - start) < GOAL_SECONDS and peak_gb < GOAL_PEAK_GB,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
