"""The ``freshsid`` command line: thin adapters over the library.

Each command parses options, makes one library call and prints the result; the
work and its tests live in the library. This module is the root app; each stage
is a sub-app in :mod:`freshsid.commands` (``freshsid data ...``, ``freshsid sids ...``)
built from the shared options of :mod:`freshsid.commands.common`. Adding a command
is a ~20-line function there; every help text carries an ``Example:`` line (a test
checks it).

Errors a user can cause (:class:`FreshsidError`) print ``error: <message>`` on
stderr, without a traceback, and exit with code 2, as do usage errors.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from freshsid import __version__
from freshsid.commands import data, embed, experiment, release, retriever, rolling, sids
from freshsid.commands.common import STATE
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


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show progress bars on stderr (default: only on a terminal)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Keep collaborative Semantic IDs fresh for generative retrieval.

    Example: freshsid data stats amazon-beauty
    """
    STATE["progress"] = progress


# The pipeline in order: data -> embed -> sids -> retriever -> staleness / experiment -> report.
app.add_typer(data.app, name="data")
app.add_typer(embed.app, name="embed")
app.add_typer(sids.app, name="sids")
app.add_typer(retriever.app, name="retriever")
app.command("staleness")(experiment.staleness)
app.command("experiment")(experiment.experiment)
app.command("demo")(experiment.demo)
app.command("report")(experiment.report)
app.command("rolling")(rolling.rolling)
app.add_typer(release.app, name="release")
app.command("refresh")(release.refresh)
app.command("status")(release.status)
app.command("recommend-batch")(release.recommend_batch)
app.command("serve")(release.serve)


def main() -> None:
    """Console entry point (``freshsid``)."""
    try:
        app(prog_name="freshsid")
    except FreshsidError as exc:  # raised outside a command, e.g. in a callback
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
