"""The ``freshsid`` command line: thin adapters over the library.

Each command parses options, makes one library call and prints the result; the
work and its tests live in the library. A stage is a sub-app (``freshsid data ...``);
adding one is a ``typer.Typer`` plus ``app.add_typer`` and ~20-line commands
that reuse the shared options below (``DatasetArg``, ``DataDirOpt``, ...) and
:func:`load_input`. Every help text carries an ``Example:`` line (a test checks it).

Errors a user can cause (:class:`FreshsidError`) print ``error: <message>`` on
stderr, without a traceback, and exit with code 2, as do usage errors.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from freshsid import __version__
from freshsid.data.interactions import Interactions
from freshsid.errors import FreshsidError

EXIT_USER_ERROR = 2


class _Group(TyperGroup):
    """Root group: turns a FreshsidError raised anywhere below into exit code 2."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FreshsidError as exc:
            _fail(str(exc))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


app = typer.Typer(
    cls=_Group,
    name="freshsid",
    help="Keep collaborative Semantic IDs fresh for generative retrieval.\n\n"
    "Example: freshsid data stats amazon-beauty",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
_state = {"progress": None}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show a spinner on stderr (default: only on a terminal)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Keep collaborative Semantic IDs fresh for generative retrieval.

    Example: freshsid data stats amazon-beauty
    """
    _state["progress"] = progress


@contextlib.contextmanager
def working(label: str) -> Iterator[None]:
    """A spinner on stderr while a slow step runs (on a terminal, or with --progress)."""
    show = _state["progress"] if _state["progress"] is not None else sys.stderr.isatty()
    if not show:
        yield
        return
    with Console(stderr=True).status(label):
        yield


# ----------------------------------------------------------------------------- shared options
DatasetArg = Annotated[
    str | None,
    typer.Argument(help="Named dataset: amazon-beauty, amazon-sports, amazon-toys or synthetic.", show_default=False),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data root or dataset folder (default: $FRESHSID_DATA or ../shared/data)."),
]
LogsOpt = Annotated[
    Path | None, typer.Option("--logs", help="A log file: CSV/TSV/parquet (.gz ok), or an original Amazon/MovieLens file.")
]
ItemsOpt = Annotated[Path | None, typer.Option("--items", help="Item metadata file for --logs.")]
ColumnsOpt = Annotated[
    str | None, typer.Option("--columns", help="User, item and time column names of --logs, e.g. uid,sku,ts.")
]
SepOpt = Annotated[str | None, typer.Option("--sep", help="Field separator of --logs (default: sniffed).")]
DropDuplicatesOpt = Annotated[
    bool, typer.Option("--drop-duplicates", help="Keep one copy of exact duplicate events instead of refusing them.")
]


def load_input(
    dataset: str | None,
    *,
    data_dir: Path | None,
    logs: Path | None,
    items: Path | None,
    columns: str | None,
    sep: str | None,
    drop_duplicates: bool,
) -> Interactions:
    """The data options every command shares -> one :func:`load_dataset` call."""
    from freshsid.data.logs import LogSchema
    from freshsid.data.registry import load_dataset

    schema = None
    if columns is not None or sep is not None:
        names = (columns or "user_id,item_id,timestamp").split(",")
        if len(names) != 3:
            raise FreshsidError(f"--columns {columns!r} must name three columns, USER,ITEM,TIME, e.g. uid,sku,ts.")
        try:
            schema = LogSchema(user=names[0].strip(), item=names[1].strip(), time=names[2].strip(), separator=sep)
        except ValidationError as exc:
            raise FreshsidError(f"Invalid --columns/--sep: {exc.errors()[0]['msg']}; fix the option.") from None
    with working(f"Loading {dataset or logs or data_dir}"):
        return load_dataset(
            dataset, data_dir=data_dir, logs=logs, items=items, schema=schema, drop_duplicates=drop_duplicates
        )


# ----------------------------------------------------------------------------- freshsid data
data_app = typer.Typer(
    cls=TyperGroup,
    help="Inspect event logs and benchmarks.\n\nExample: freshsid data stats amazon-beauty --json",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("stats")
def data_stats(
    dataset: DatasetArg = None,
    data_dir: DataDirOpt = None,
    logs: LogsOpt = None,
    items: ItemsOpt = None,
    columns: ColumnsOpt = None,
    sep: SepOpt = None,
    drop_duplicates: DropDuplicatesOpt = False,
    parts: Annotated[int, typer.Option("--parts", min=2, help="Number of equal-count time parts.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Sizes, time span, equal-count parts, new items per part and the test window of a dataset.

    Example: freshsid data stats amazon-beauty --json
    """
    from freshsid.data.stats import dataset_stats

    interactions = load_input(
        dataset, data_dir=data_dir, logs=logs, items=items, columns=columns, sep=sep, drop_duplicates=drop_duplicates
    )
    stats = dataset_stats(interactions, n_parts=parts)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
    else:
        _print_stats(stats)


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


def main() -> None:
    """Console entry point (``freshsid``)."""
    try:
        app(prog_name="freshsid")
    except FreshsidError as exc:  # raised outside a command, e.g. in a callback
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
