"""Keep what pooling a finished run needs, so builds made in different sessions pool.

    python benchmarks/keep_scores.py runs/final22-sports-b0 benchmarks/scores/final22-sports-b0

Run folders are not kept between checkouts (``runs/`` is ignored), and a pooled interval
needs every build's per-user scores. This copies a run's ``results.json``, ``report.md``,
``stage_seconds.json`` and the per-user files its records name (``eval/*.users.parquet``,
a few hundred kB a policy) into DEST with the same relative paths, so DEST reads as a run
folder to ``summarize_runs.py`` (with or without ``--pool``). Nothing is written when a
named file is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ALWAYS = ("results.json", "report.md", "stage_seconds.json")


def kept_files(run: Path) -> list[Path]:
    """Paths (relative to ``run``) that pooling and reading the run need."""
    results = json.loads((run / "results.json").read_text())
    per_user = {Path(path) for record in results["policies"].values() for path in record.get("per_user", [])}
    return [Path(name) for name in ALWAYS if (run / name).exists()] + sorted(per_user)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished experiment's folder")
    parser.add_argument("dest", type=Path, help="where to keep its results and per-user scores")
    args = parser.parse_args()
    if not (args.run / "results.json").exists():
        print(f"error: {args.run} has no results.json; keep a finished run.", file=sys.stderr)
        return 2
    files = kept_files(args.run)
    missing = [str(f) for f in files if not (args.run / f).exists()]
    if missing:
        print(f"error: {args.run} lacks {', '.join(missing)}; nothing was kept.", file=sys.stderr)
        return 2
    for name in files:
        (args.dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.run / name, args.dest / name)
    size = sum((args.dest / f).stat().st_size for f in files)
    print(f"kept {len(files)} files ({size / 1e6:.1f} MB) of {args.run} in {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
