"""How fast the CLI answers ``--help``: the median of 5 ``freshsid --help`` runs, and one
run of every ``freshsid CMD --help``, each in a fresh interpreter (goal: <= 0.5 s).

Peak RSS is the largest child's ``ru_maxrss``. Run:  python benchmarks/bench_startup.py
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
GOAL_S = 0.5


def timed_help(*path: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "freshsid", *path, "--help"], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def command_paths() -> list[tuple[str, ...]]:
    import typer

    from freshsid.cli import app

    def walk(command, path=()):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, (*path, name))

    return list(walk(typer.main.get_command(app)))


def main() -> None:
    sys.path.insert(0, str(SRC))
    timed_help()  # warm the file cache; not counted
    root = [timed_help() for _ in range(5)]
    per_command = {" ".join(p): round(timed_help(*p), 3) for p in command_paths() if p}
    slowest = max(per_command, key=per_command.get)
    print(json.dumps({
        "root_median_s": round(statistics.median(root), 3),
        "root_runs_s": [round(t, 3) for t in root],
        "slowest_command": slowest,
        "slowest_command_s": per_command[slowest],
        "commands_median_s": round(statistics.median(per_command.values()), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "goal_s": GOAL_S,
        "load_average": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
