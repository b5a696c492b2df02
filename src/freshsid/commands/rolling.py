"""``freshsid rolling``: the strategies of the rolling protocol over many refreshes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from freshsid.commands.common import (
    DataSource,
    DeviceOpt,
    RunOutOpt,
    ThreadsOpt,
    configure,
    data_options,
    experiment_preset,
    show_progress,
    use_device,
)
from freshsid.evaluate.rolling_config import ROLLING_STRATEGIES, SIGNALS, RollingConfig
from freshsid.recipes import RECIPES


@data_options()
def rolling(
    data: DataSource,
    out: RunOutOpt,
    preset: Annotated[str, typer.Option("--preset", help="Size preset of every build: tiny, cpu or paper.")] = "cpu",
    n_parts: Annotated[int, typer.Option("--n-parts", min=4, help="Equal-count parts the logs are cut into.")] = 10,
    initial: Annotated[int, typer.Option("--initial", min=1, help="The initial build uses parts [0, initial).")] = 5,
    held_out: Annotated[int, typer.Option("--held-out", min=0, help="Last parts never read (default 1: the standard "
                                                                      "split's test part; 0 scores it too).")] = 1,
    strategies: Annotated[str | None, typer.Option("--strategies", help=f"Comma-separated, from {', '.join(ROLLING_STRATEGIES)} (default: all).")] = None,
    signal: Annotated[str, typer.Option("--signal", help=f"Staleness signal of the Triggered strategy: {', '.join(SIGNALS)}.")] = "decay",
    calibration_rounds: Annotated[int, typer.Option("--calibration-rounds", min=1, help="Rounds that set the trigger's threshold.")] = 2,
    recipe: Annotated[str | None, typer.Option("--recipe", help=f"How SIDs are refreshed: {', '.join(RECIPES)}.")] = None,
    max_eval_users: Annotated[int | None, typer.Option("--max-eval-users", min=1, help="Score a random sample of this many users per part.")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Refresh after refresh: Frozen, FT-old, incremental coding, an aligned chain, Full rebuilds, a trigger and MostPop.

    Round r uses part r and is scored on part r+1; the last part is never read unless --held-out 0. Stages are cached in --out, so a rerun resumes. Writes results.json,
    report.md and plots (recall by round, compute against quality, codes over rounds).

    Example: freshsid rolling --dataset amazon-beauty --preset cpu --out runs/rolling-beauty

    More rounds: freshsid rolling --dataset amazon-beauty --n-parts 20 --initial 10 --out runs/rolling-beauty-20

    Two runs side by side on two cores: freshsid rolling --dataset amazon-toys --threads 1 --out runs/rolling-toys
    """
    from freshsid.evaluate.rolling import Rolling

    use_device(device)
    run = configure(experiment_preset(preset), recipe=recipe, max_eval_users=max_eval_users, device=device,
                    threads=threads)
    chosen = ROLLING_STRATEGIES if strategies is None else tuple(s.strip() for s in strategies.split(",") if s.strip())
    config = configure(RollingConfig(run=run), n_parts=n_parts, initial=initial, held_out=held_out,
                       strategies=chosen, signal=signal,
                       calibration_rounds=calibration_rounds)
    runner = Rolling(data.load(), config, out, show_progress=show_progress())
    runner.log = lambda line: typer.echo(line, err=True)
    results = runner.run()
    summary = results["summary"]
    typer.echo(f"best mean Recall@{summary['k']}: {summary['best_quality']}; best gain per FLOP: {summary['best_per_flop']}")
    for name in ("results.json", "report.md", "recall_by_round.png", "compute_vs_quality.png", "codes_over_rounds.png"):
        typer.echo(str(Path(out) / name))
