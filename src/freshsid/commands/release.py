"""``freshsid release``: bundle a checkpoint with its SIDs and catalog, list, promote, roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from freshsid.commands.common import CheckpointOpt, DataSource, JsonOpt, SidsOpt, data_options, load_split, print_json

app = typer.Typer(
    cls=TyperGroup,
    help="Release bundles: what is served, and which one is current.\n\n"
    "Example: freshsid release create --checkpoint runs/beauty/base --sids runs/beauty/sids-0-8 --dataset amazon-beauty --out releases",
    no_args_is_help=True,
)


def _releases_root(root: Path | None) -> Path | None:
    from freshsid.artifacts import check_output

    return None if root is None else check_output(root, marker="releases")


RootArg = Annotated[Path, typer.Argument(help="A releases root (freshsid release create --out).", show_default=False)]


@app.command("create")
@data_options()
def create(
    data: DataSource,
    checkpoint: CheckpointOpt,
    sids: SidsOpt,
    out: Annotated[Path, typer.Option("--out", help="The releases root (created if new).", show_default=False,
                                      callback=_releases_root)],
    promote: Annotated[bool, typer.Option("--promote", help="Make the new release current.")] = False,
) -> None:
    """Bundle --checkpoint, its SID table and the catalog of the items it codes into a new release under --out.

    Its parent is the current release. Prints the new release id.

    Example: freshsid release create --checkpoint runs/beauty/base --sids runs/beauty/sids-0-8 --dataset amazon-beauty --out releases --promote
    """
    from freshsid.retriever.model import load_checkpoint
    from freshsid.serve.release import Releases
    from freshsid.sid.table import SidTable

    table = SidTable.load(sids)
    model, manifest = load_checkpoint(checkpoint, expected_shape=table.codebook_sizes)
    logs = load_split(data, table).logs
    releases = Releases(out)
    release_id = releases.create(model, manifest, table, logs)
    if promote:
        releases.promote(release_id)
    typer.echo(f"{release_id}{' (current)' if promote else ''} -> {releases.path(release_id)}")


@app.command("list")
def list_releases(root: RootArg, as_json: JsonOpt = False) -> None:
    """Every release of ROOT, oldest first: parent, items, training windows, metrics; the current one marked.

    Example: freshsid release list releases
    """
    from freshsid.artifacts import read_manifest
    from freshsid.serve.release import KIND, Releases

    releases = Releases(root)
    current = releases.current
    rows = []
    for release_id in releases.ids():
        info = read_manifest(releases.path(release_id), KIND, verify=False).info
        rows.append({"id": release_id, "current": release_id == current, "parent": info.get("parent_release"),
                     "items": info.get("n_items"), "history": info["data"].get("history_window"),
                     "target": info["data"].get("target_window"), "metrics": info.get("metrics", {})})
    if as_json:
        print_json({"current": current, "releases": rows})
        return
    table = Table("id", "parent", "items", "trained on (history / targets)", "metrics", title=f"releases in {root}")
    for row in rows:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items())
        table.add_row(row["id"] + (" *" if row["current"] else ""), row["parent"] or "—", f"{row['items']:,}",
                      f"{row['history']} / {row['target']}", metrics or "—")
    Console().print(table)


@app.command("promote")
def promote(root: RootArg, release_id: Annotated[str, typer.Argument(help="The release to serve, e.g. r0002.")]) -> None:
    """Make RELEASE_ID the current release of ROOT (its bundle is checked first).

    Example: freshsid release promote releases r0002
    """
    from freshsid.serve.release import Releases

    Releases(root).promote(release_id)
    typer.echo(f"current: {release_id}")


@app.command("rollback")
def rollback(root: RootArg) -> None:
    """Make the release promoted before the current one current again.

    Example: freshsid release rollback releases
    """
    from freshsid.serve.release import Releases

    typer.echo(f"current: {Releases(root).rollback()}")
