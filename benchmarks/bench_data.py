"""Time load + temporal split (parts and test examples) and record peak memory.

Cases (each runs in a fresh interpreter, so ``ru_maxrss`` is that case's own peak):

- ``beauty``: Amazon Beauty 5-core from the shared TSV layout (goal: < 3 s).
- ``synthetic-10m``: 10M synthetic events from parquet (goal: < 60 s). The parquet
  file is generated once under ``benchmarks/out/`` (not timed; its time is printed).

Prints one JSON line per case. Run:  python benchmarks/bench_data.py [--case NAME] [--events N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
GOALS = {"beauty": 3.0, "synthetic-10m": 60.0}


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic_config(n_events: int):
    from freshsid.data.synthetic import SyntheticConfig

    return SyntheticConfig(n_events=n_events, n_users=n_events // 20, n_items=n_events // 100, span_days=730)


def _ensure_synthetic(n_events: int) -> tuple[Path, float]:
    """The 10M-event parquet (generated once); returns its path and generation seconds (0 if cached)."""
    from freshsid.data.synthetic import write_synthetic

    folder = OUT / f"synthetic-{n_events}"
    path = folder / "interactions.parquet"
    if path.is_file():
        return path, 0.0
    start = time.perf_counter()
    write_synthetic(_synthetic_config(n_events), folder)
    return path, time.perf_counter() - start


def run_case(case: str, n_events: int) -> dict:
    from freshsid.data.logs import load_logs
    from freshsid.data.registry import load_dataset
    from freshsid.data.temporal import TemporalSplit, Window

    generated = 0.0
    if case == "synthetic-10m":
        path, generated = _ensure_synthetic(n_events)
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    if case == "beauty":
        logs = load_dataset("amazon-beauty")
    else:
        # The registry keeps same-day repeats of synthetic data (they are model events).
        logs = load_logs(path, duplicates="keep", name=case)
    loaded = time.perf_counter()
    split = TemporalSplit(logs, n_parts=10)
    examples = split.examples(Window(start=9, stop=10), max_history=20)
    report = split.report(Window(start=9, stop=10))
    done = time.perf_counter()
    return {
        "case": case,
        "events": logs.n_events,
        "users": logs.n_users,
        "items": logs.n_items,
        "test_users": len(examples),
        "unseen_label_share": round(report["unseen_label_share"], 4),
        "load_s": round(loaded - start, 3),
        "split_s": round(done - loaded, 3),
        "total_s": round(done - start, 3),
        "goal_s": GOALS[case],
        "ok": done - start < GOALS[case],
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_mb": round(rss_before, 1),
        "generate_s": round(generated, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(GOALS), help="run one case in this process")
    parser.add_argument("--events", type=int, default=10_000_000, help="synthetic events (default 10M)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.events)), flush=True)
        return
    for case in GOALS:
        # A fresh interpreter per case keeps each peak-memory figure its own.
        cmd = [sys.executable, __file__, "--case", case, "--events", str(args.events)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
