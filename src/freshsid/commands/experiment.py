"""Root commands over whole runs: ``staleness``, ``experiment``, ``demo`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from freshsid.commands.common import (
    BeamOpt,
    DataSource,
    DeviceOpt,
    JsonOpt,
    KsOpt,
    MaxUsersOpt,
    RunOutOpt,
    ThreadsOpt,
    configure,
    data_options,
    experiment_preset,
    load_split,
    parse_ks,
    print_json,
    show_progress,
    use_device,
)
from freshsid.config import DEFAULT_BEAM, DEVICE_HELP, PRESETS, preset as preset_config
from freshsid.recipes import RECIPES
from freshsid.errors import FreshsidError

if TYPE_CHECKING:  # kept out of module import so that --help never loads torch or polars
    from freshsid.data.interactions import Interactions
    from freshsid.sid.table import SidTable

# Each preset's default recipe, for --recipe's help.
_PRESET_RECIPES = ", ".join(f"{name}: {preset_config(name).recipe}" for name in PRESETS)

MaxEvalUsersOpt = Annotated[
    int | None, typer.Option("--max-eval-users", min=1, help="Evaluate a random sample of this many test users.")
]


@data_options()
def staleness(
    data: DataSource,
    legacy: Annotated[Path, typer.Option("--legacy", help="The legacy SidTable folder.", show_default=False)],
    refreshed: Annotated[Path, typer.Option("--refreshed", help="A SidTable refit on later parts.", show_default=False)],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="A retriever trained on the legacy table.")] = None,
    beam: BeamOpt = DEFAULT_BEAM,
    max_users: MaxUsersOpt = None,
    ks: KsOpt = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """SID churn per level between a legacy and a refreshed table; with --checkpoint, recall by part.

    Churn is the share of common items whose code changes, raw and after alignment. Recall by part shows how the
    checkpoint decays on each part after the window its manifest says it trained on.

    Example: freshsid staleness --dataset amazon-beauty --legacy runs/beauty/sids-0-8 --refreshed runs/beauty/sids-0-9 --checkpoint runs/beauty/base
    """
    from freshsid.api import GenerativeRetriever
    from freshsid.evaluate.staleness import recall_by_part, sid_churn
    from freshsid.sid.table import SidTable

    cutoffs = parse_ks(ks)
    use_device(device)
    old = SidTable.load(legacy)
    record: dict[str, Any] = {"churn": sid_churn(old, SidTable.load(refreshed))}
    if checkpoint is not None:
        retriever = GenerativeRetriever.load(checkpoint, old)
        window = retriever.trained_window_
        split = load_split(data, old)
        record["trained_on"] = str(window)
        record["by_part"] = recall_by_part(retriever.model_, old, split, trained_on=window, ks=cutoffs, beam=beam, max_users=max_users)
    if as_json:
        print_json(record)
        return
    churn = Table("level", "churn (raw)", "churn (aligned)", title="share of common items whose code changes")
    for row in record["churn"]:
        churn.add_row(str(row["level"] + 1), f"{row['churn_raw']:.1%}", f"{row['churn_aligned']:.1%}")
    Console().print(churn)
    if "by_part" in record:
        decay = Table("part", *[f"R@{k}" for k in cutoffs], title=f"recall by part, trained on {record['trained_on']}")
        for row in record["by_part"]:
            decay.add_row(str(row["part"]), *[f"{row[f'recall@{k}']:.4f}" for k in cutoffs])
        Console().print(decay)


@data_options()
def experiment(
    data: DataSource,
    out: RunOutOpt,
    preset: Annotated[str | None, typer.Option("--preset", help="Size preset: tiny, cpu or paper (default: cpu; freshsid.config.PRESETS).")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="A JSON or TOML experiment config, or a results.json to repeat its run.")] = None,
    policies: Annotated[str | None, typer.Option("--policies", help="Comma-separated policies (default: all), e.g. Base,FT-old,Full.")] = None,
    max_eval_users: MaxEvalUsersOpt = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help=f"How SIDs are built and refreshed: {'; '.join(f'{r.name} ({r.description})' for r in RECIPES.values())}. Default: the preset's ({_PRESET_RECIPES}).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated fine-tuning seeds; every fine-tuned policy runs once per seed and reports the mean (default: 0).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="The build's seed, from which every stage's (SASRec, tokenizer, Base and Full, fine-tunes) derives: builds of different seeds are independent (default: the config's, 0).")] = None,
    validation: Annotated[bool, typer.Option("--validation", help="Run on the validation split (every window one part earlier: base [0, 7), gap [7, 8), scored on part 8), where settings are chosen; the last part is never read.")] = False,
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP + " Default: the config's (auto).")] = None,
    kcore: Annotated[int | None, typer.Option("--kcore", min=2, help="Keep only the k-core of the events before the test part (users and items with at least N events there); the test part is never filtered.")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Run the policies (Base, FT-old, FT-new, FT-aligned, Full, ...) on one dataset; write results and report.

    Stages are cached in --out, so a rerun resumes. Writes results.json (with the whole config), report.md and plots.

    Example: freshsid experiment --dataset amazon-beauty --preset cpu --policies "Base,FT-old,FT-aligned (hungarian),Full" --out runs/beauty

    Warm refresh, three fine-tuning seeds: freshsid experiment --dataset amazon-beauty --recipe warm --seeds 0,1,2 --out runs/beauty-warm

    Repeat a run from its results: freshsid experiment --dataset amazon-beauty --config runs/beauty/results.json --out runs/beauty-again

    Choose settings on the validation split: freshsid experiment --dataset amazon-beauty --validation --out runs/beauty-val

    The third of five independent builds: freshsid experiment --dataset amazon-beauty --seed 2 --out runs/beauty-b2

    A 5-core filter that knows nothing of the test part: freshsid experiment --dataset my-logs --kcore 5 --out runs/mine-5core
    """
    from freshsid.config import load_config

    if preset is not None and config_file is not None:
        raise FreshsidError("--preset and --config both set every size; pass one of them.")
    chosen = None if policies is None else tuple(p.strip() for p in policies.split(",") if p.strip())
    if chosen == ():
        raise FreshsidError("--policies names no policy; pass a comma-separated list such as Base,FT-old,Full.")
    base = load_config(config_file) if config_file is not None else experiment_preset(preset or "cpu")
    if seed is not None:
        base = base.reseeded(seed)
    protocol = base.protocol.validation() if validation else base.protocol
    if kcore is not None:
        protocol = protocol.model_copy(update={"kcore": kcore})
    config = configure(base, policies=chosen, max_eval_users=max_eval_users, recipe=recipe,
                       finetune_seeds=None if seeds is None else _seed_list(seeds),
                       protocol=protocol.model_dump(), device=device, threads=threads)
    run_experiment(data.load(), config, out)


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise FreshsidError(f"--seeds {text!r} is not a comma-separated list of integers; e.g. --seeds 0,1,2.") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise FreshsidError(f"--seeds {text!r} must list distinct integers >= 0; e.g. --seeds 0,1,2.")
    return seeds


def demo(
    out: RunOutOpt = Path("runs/demo"),
    max_eval_users: MaxEvalUsersOpt = None,
) -> None:
    """The whole experiment on the bundled synthetic drifting catalog, with the tiny preset.

    Example: freshsid demo --out runs/demo
    """
    config = configure(experiment_preset("tiny"), max_eval_users=max_eval_users)
    run_experiment(DataSource(dataset="synthetic").load(), config, out)


def run_experiment(logs: Interactions, config: Any, out: Path) -> None:
    """One :meth:`Experiment.run`; stage lines go to stderr, the headline table to stdout."""
    from freshsid.evaluate.experiment import Experiment
    from freshsid.evaluate.report import headline_table
    from freshsid.evaluate.summary import newcomer_summary

    use_device(config.device)
    runner = Experiment(logs, config, out, show_progress=show_progress())
    runner.log = lambda line: typer.echo(line, err=True)
    results = runner.run()
    ks = tuple(config.ks[-3:])
    typer.echo("\n\n".join(part for part in (newcomer_summary(results, ks), headline_table(results, ks=ks)) if part))
    _print_outputs(out)


def report(
    results_json: Annotated[Path, typer.Argument(help="A results.json written by freshsid experiment.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md and the plots.", show_default=False)],
) -> None:
    """Re-render report.md and the plots from a results.json.

    Example: freshsid report runs/beauty/results.json --out runs/beauty
    """
    from freshsid.data.tables import check_readable
    from freshsid.evaluate.report_plots import write_report

    check_readable(Path(results_json))
    try:
        results = json.loads(Path(results_json).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
        raise FreshsidError(f"Cannot read {results_json} ({reason}); pass a results.json written by freshsid experiment.") from None
    policies = results.get("policies") if isinstance(results, dict) else None
    if not isinstance(policies, dict) or not policies or not all(
        isinstance(p, dict) and isinstance(p.get("metrics", {}), dict) for p in policies.values()
    ):
        raise FreshsidError(f"{results_json} is not an experiment's results.json; pass the one freshsid experiment wrote.")
    for path in write_report(results, out):
        typer.echo(str(path))


def _print_outputs(out: Path) -> None:
    names = ["results.json", "report.md", *sorted(p.name for p in Path(out).glob("*.png"))]
    for name in names:
        if (Path(out) / name).exists():
            typer.echo(str(Path(out) / name))
