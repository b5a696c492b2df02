"""``freshsid data``: inspect event logs and benchmarks."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from freshsid.commands.common import DataSource, JsonOpt, data_options, print_json

app = typer.Typer(
    cls=TyperGroup,
    help="Inspect event logs and benchmarks.\n\nExample: freshsid data stats amazon-beauty --json",
    no_args_is_help=True,
)


@app.command("stats")
@data_options(dataset="argument")
def stats(
    data: DataSource,
    parts: Annotated[int, typer.Option("--n-parts", min=2, help="Number of equal-count time parts.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Sizes, time span, equal-count parts, new items per part and the test window of a dataset.

    Example: freshsid data stats amazon-beauty --json
    """
    from freshsid.data.stats import dataset_stats

    result = dataset_stats(data.load(), n_parts=parts)
    if as_json:
        print_json(result)
    else:
        _print_stats(result)


def _print_stats(stats: dict[str, Any]) -> None:
    console = Console()
    test = stats["test"]
    console.print(
        f"[bold]{stats['name']}[/bold]: {stats['users']:,} users, {stats['items']:,} items, "
        f"{stats['events']:,} events, {stats['first_event']} .. {stats['last_event']} ({stats['span_days']:,} days)"
    )
    table = Table("part", "events", "from", "to", "new items")
    for part in stats["parts"]:
        table.add_row(str(part["part"]), f"{part['events']:,}", part["start"], part["end"], f"{part['new_items']:,}")
    console.print(table)
    console.print(
        f"test window {stats['test_window']}: {test['test_users']:,} test users "
        f"({test['excluded_users']:,} excluded: no earlier event), {test['labels']:,} labels, "
        f"{test['labels_on_unseen_items']:,} unreachable "
        f"({test['unseen_label_share']:.1%}, items unseen before the window)"
    )
