"""The statistics the synthetic world is calibrated to, on the Amazon sets and on it.

Prints one Markdown table of :func:`freshsid.data.stats.shape_stats` (history lengths,
popularity skew, repeat rate, drift) for each dataset named; the generator's docstring
(:mod:`freshsid.data.synthetic`) records it and the settings chosen from it.

    python benchmarks/calibrate_synthetic.py amazon-beauty amazon-sports amazon-toys synthetic
"""

from __future__ import annotations

import argparse

from freshsid.data.registry import load_dataset
from freshsid.data.stats import shape_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+")
    args = parser.parse_args()
    rows = {name: shape_stats(load_dataset(name)) for name in args.datasets}
    print("| statistic | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key in next(iter(rows.values())):
        print(f"| {key} | " + " | ".join(f"{row[key]:.3f}" if isinstance(row[key], float) else f"{row[key]:,}"
                                         for row in rows.values()) + " |")


if __name__ == "__main__":
    main()
