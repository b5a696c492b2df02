"""Load and split a large Yambda-layout log: goal <= 3 min and <= 8 GB peak RSS for 100M events.

Writes a synthetic ``multi_event.parquet`` in Yambda's flat layout once (``uid``,
``timestamp``, ``item_id``, ``is_organic``, ``played_ratio_pct``,
``track_length_seconds``, ``event_type``; rows sorted by user, then time, as Yambda
publishes them) under ``benchmarks/out/``, then, in a fresh interpreter (so
``ru_maxrss`` is that process's own peak), times :func:`freshsid.load_dataset` on it
(a polars streaming scan with the ``--where`` condition, then the sort by time and the
densified ids) and the temporal split: ten parts, the items of base, the new items of
the gap and the test examples.

Run:  python benchmarks/bench_large_logs.py [--events 100000000] [--where "true"]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
CHUNK = 5_000_000
GOAL_SECONDS, GOAL_GB = 180.0, 8.0


def generate(path: Path, n_events: int, seed: int = 0) -> float:
    """Write the synthetic Yambda file chunk by chunk (each chunk a block of users); returns seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_users, n_items, span = max(1, n_events // 100), max(2, n_events // 20), 26_000_000
    kinds = pa.array(["listen", "like", "dislike", "unlike", "undislike"])
    tmp = path.with_suffix(".tmp")
    writer = None
    users_per_chunk = max(1, n_users * CHUNK // n_events)
    first_user = 0
    for start in range(0, n_events, CHUNK):
        n = min(CHUNK, n_events - start)
        uid = np.sort(rng.integers(first_user, first_user + users_per_chunk, n)).astype(np.uint32)
        first_user += users_per_chunk
        ts = rng.integers(0, span, n).astype(np.uint32)
        order = np.lexsort((ts, uid))
        item = np.minimum(rng.zipf(1.3, n), n_items).astype(np.uint32)
        kind = rng.choice(5, n, p=[0.9, 0.05, 0.02, 0.02, 0.01]).astype(np.int8)
        listen = kind == 0
        table = pa.table({
            "uid": uid[order], "timestamp": ts[order], "item_id": item,
            "is_organic": rng.integers(0, 2, n).astype(np.uint8),
            "played_ratio_pct": pa.array(rng.integers(1, 150, n).astype(np.uint16), mask=~listen),
            "track_length_seconds": pa.array(rng.integers(60, 400, n).astype(np.uint32), mask=~listen),
            "event_type": pa.DictionaryArray.from_arrays(pa.array(kind), kinds),
        })
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.rename(path)
    return time.perf_counter() - started


def measure(path: Path, where: str) -> dict:
    """Run in a fresh interpreter: load + split, with this process's peak RSS."""
    import freshsid
    from freshsid.data.temporal import TemporalSplit, Window

    started = time.perf_counter()
    logs = freshsid.load_dataset(logs=path, where=where)
    loaded = time.perf_counter()
    split = TemporalSplit(logs, 10)
    base_items = split.allowed_items(Window(start=0, stop=8))
    new_items = split.new_items(Window(start=8, stop=9))
    examples = split.examples(Window(start=9, stop=10))
    done = time.perf_counter()
    return {
        "events": logs.n_events, "users": logs.n_users, "items": logs.n_items,
        "part_sizes": [int(s) for s in split.part_sizes()], "base_items": len(base_items),
        "new_items_in_gap": len(new_items), "test_users": len(examples),
        "load_s": round(loaded - started, 1), "split_s": round(done - loaded, 1), "total_s": round(done - started, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "cpu_s": round(sum(os.times()[:2]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000_000)
    parser.add_argument("--where", default="true", help="Which events count (default: every event).")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.where)))
        return
    OUT.mkdir(exist_ok=True)
    path = OUT / f"yambda-{args.events}.parquet"
    generated = 0.0 if path.exists() else generate(path, args.events)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    wall = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--measure", str(path), "--where", args.where],
                           env=env, capture_output=True, text=True, check=True)
    record = json.loads(child.stdout.strip().splitlines()[-1])
    record.update(process_wall_s=round(time.perf_counter() - wall, 1), generate_s=round(generated, 1),
                  file_gb=round(path.stat().st_size / 1024**3, 2), where=args.where,
                  goal=f"<= {GOAL_SECONDS:.0f} s and <= {GOAL_GB:.0f} GB", load_average=os.getloadavg()[0])
    print(json.dumps(record))


if __name__ == "__main__":
    main()
