"""``freshsid sids``: build, inspect and align Semantic ID tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import typer
from typer.core import TyperGroup

from freshsid.commands.common import (
    BASE,
    DataSource,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    PresetOpt,
    SeedOpt,
    configure,
    data_options,
    experiment_preset,
    load_split,
    print_json,
    show_progress,
    use_device,
)
from freshsid.commands.embed import PartsOpt, train_collab
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.errors import FreshsidError

if TYPE_CHECKING:  # kept out of module import so that --help never loads torch or polars
    from freshsid.embed.store import Embeddings
    from freshsid.sid.table import SidTable

app = typer.Typer(
    cls=TyperGroup,
    help="Build, inspect and align Semantic ID tables.\n\n"
    "Example: freshsid sids build --dataset amazon-beauty --parts 0:8 --tokenizer rqkmeans --out runs/beauty/sids-0-8",
    no_args_is_help=True,
)
TableArg = Annotated[Path, typer.Argument(help="A SidTable folder.", show_default=False)]


@app.command("build")
@data_options()
def build(
    data: DataSource,
    out: OutOpt,
    parts: PartsOpt = BASE,
    tokenizer: Annotated[Literal["rqvae", "rqkmeans"] | None, typer.Option("--tokenizer", help="Tokenizer (default: the preset's).")] = None,
    source: Annotated[Literal["collab", "content"] | None, typer.Option("--source", help="Embeddings to compute when --embeddings is not given (default: collab).")] = None,
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="An embeddings folder (freshsid embed ...) instead of computing them.")] = None,
    levels: Annotated[int | None, typer.Option("--levels", min=1, help="Semantic levels, without the collision suffix (default: the preset's).")] = None,
    codebook_size: Annotated[int | None, typer.Option("--codebook-size", min=1, help="Codes per level (default: the preset's).")] = None,
    suffix_size: Annotated[int | None, typer.Option("--suffix-size", min=1, help="Codes of the collision-suffix level (default: the preset's).")] = None,
    seed: SeedOpt = None,
    preset: PresetOpt = "cpu",
    warm_from: Annotated[Path | None, typer.Option("--warm-from", help="An earlier SidTable built by a tokenizer: continue from that tokenizer (a warm refresh).")] = None,
    warm_epochs: Annotated[int | None, typer.Option("--warm-epochs", min=0, help="With --warm-from: RQ-VAE epochs or RQ-KMeans iterations to continue for (default: the preset's; 0 codes with the old tokenizer as is).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="RQ-VAE training epochs (rqvae only).")] = None,
    balanced: Annotated[bool, typer.Option("--balanced", help="Size-balanced code assignment (rqkmeans only).")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Fit a tokenizer on the embeddings of the items seen in --parts and save their SidTable.

    Without --embeddings, SASRec embeddings are trained on --parts (or content ones computed) on the fly.

    Prints the collision rate before the suffix level, utilisation per level, the largest group, build seconds.

    Example: freshsid sids build --dataset amazon-beauty --parts 0:8 --tokenizer rqkmeans --source collab --out runs/beauty/sids-0-8

    Warm refresh: freshsid sids build --dataset amazon-beauty --parts 0:9 --embeddings runs/beauty/embed-0-9 --warm-from runs/beauty/sids-0-8 --out runs/beauty/sids-0-9
    """
    from freshsid.api import code_items
    from freshsid.sid.table import SidTable

    use_device(device)
    legacy = None
    if warm_from is not None:
        legacy = SidTable.load(warm_from)
        tokenizer = tokenizer or legacy.meta["tokenizer"].get("kind")
        levels, codebook_size = levels or legacy.n_levels, codebook_size or legacy.codebook_sizes[0]
        suffix_size = suffix_size or legacy.codebook_sizes[-1]
    elif warm_epochs is not None:
        raise FreshsidError("--warm-epochs applies to a warm refresh only; pass --warm-from TABLE or drop it.")
    base = experiment_preset(preset).sid
    if tokenizer is not None and tokenizer != base.tokenizer:
        base = base.model_copy(update={"tokenizer": tokenizer, "epochs": None, "balanced": False})
    config = configure(base, n_levels=levels, codebook_size=codebook_size, suffix_size=suffix_size, seed=seed,
                       warm_epochs=warm_epochs, epochs=epochs, balanced=balanced or None)
    window = Window.parse(parts)
    split = load_split(data)
    emb, inputs = _item_embeddings(split, window, source=source, folder=embeddings, preset=preset, seed=seed)
    # Every item of the parts gets a SID, as in `freshsid experiment`; an item the embedding
    # model never trained on is coded from its initial row (counted in the output).
    table = code_items(emb, split, window, config, inputs=inputs, warm_from=legacy)
    table.save(out)
    _print_build(table, emb.kind, untrained=len(np.setdiff1d(table.items, emb.items)), out=out)


def _item_embeddings(split: TemporalSplit, window: Window, *, source: str | None, folder: Path | None,
                     preset: str, seed: int | None) -> tuple[Embeddings, dict[str, str]]:
    """The embeddings artifact at ``folder``, else embeddings computed for ``window``."""
    from freshsid.artifacts import read_manifest
    from freshsid.embed.store import Embeddings

    logs = split.logs
    if folder is None:
        if source == "content":
            from freshsid.embed.content import encode_content

            emb = encode_content(logs, progress=show_progress())
        else:
            emb = train_collab(split, window, preset=preset, seed=seed)
        return emb, {"logs": logs.fingerprint}
    emb, manifest = Embeddings.load(folder), read_manifest(folder)
    if source is not None and source != emb.kind:
        raise FreshsidError(f"--source {source} conflicts with {folder}, which holds {emb.kind} embeddings; drop --source.")
    if manifest.inputs.get("logs") != logs.fingerprint:
        raise FreshsidError(f"{folder} was made from other logs than {logs.name}; pass the dataset it was made from.")
    return emb, {"logs": logs.fingerprint, "embeddings": manifest.fingerprint}


def _print_build(table: SidTable, kind: str, *, untrained: int, out: Path) -> None:
    stats, sizes = table.meta["stats"], table.codebook_sizes
    tokenizer = table.meta["tokenizer"]["kind"]
    typer.echo(f"SID table: {len(table):,} items, {table.n_levels} levels x {list(sizes[:-1])} codes + suffix {sizes[-1]}, "
               f"{tokenizer} on {kind} embeddings of parts {table.meta['window']}")
    if untrained:
        typer.echo(f"items of those parts the embedding model never trained on (coded from their initial rows): {untrained:,}")
    typer.echo(f"collision rate before suffix: {stats['collision_rate']:.1%}; largest group: {stats['max_group_size']} items")
    typer.echo("utilisation per level: " + "  ".join(f"L{i + 1} {u:.1%}" for i, u in enumerate(stats["utilisation"])))
    typer.echo(f"tokenizer build: {table.meta['compute']['tokenizer_seconds']:.2f} s -> {out}")


@app.command("inspect")
@data_options()
def inspect_table(
    folder: TableArg,
    data: DataSource,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Level-1 codes to show, the most populous first.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Utilisation, collisions, provenance and sample prefixes of a SidTable.

    Pass the dataset (optional) to show item titles next to the sample prefixes.

    Example: freshsid sids inspect runs/beauty/sids-0-8 --dataset amazon-beauty
    """
    from freshsid.sid.collisions import collision_stats
    from freshsid.sid.table import SidTable

    table = SidTable.load(folder)
    titles = _titles(data.load()) if data.given else {}
    report = {
        "n_items": len(table),
        "codebook_sizes": list(table.codebook_sizes),
        "tokenizer": table.meta["tokenizer"],
        "window": table.meta["window"],
        "parent": table.meta["parent"],
        "stats": collision_stats(table.codes[:, :-1], table.codebook_sizes[:-1]),
        "alignment": table.meta["stats"].get("alignment"),
        "samples": sample_prefixes(table, titles, n=samples),
    }
    if as_json:
        print_json(report)
    else:
        _print_inspect(report)


def sample_prefixes(table: SidTable, titles: dict[str, str], *, n: int, per_code: int = 3) -> list[dict[str, Any]]:
    """The ``n`` most populous level-1 codes, each with its first ``per_code`` items (id, title)."""
    codes, counts = np.unique(table.codes[:, 0], return_counts=True)
    top = np.argsort(-counts, kind="stable")[:n]
    out = []
    for code, count in zip(codes[top], counts[top]):
        ids = table.item_ids[table.codes[:, 0] == code][:per_code]
        out.append({"code": int(code), "items": int(count),
                    "examples": [{"item_id": str(i), "title": titles.get(str(i), "")} for i in ids]})
    return out


def _titles(logs) -> dict[str, str]:
    return dict(zip(logs.items["item_id"].cast(str).to_list(), logs.items["title"].to_list()))


def _print_inspect(report: dict[str, Any]) -> None:
    stats, sizes = report["stats"], report["codebook_sizes"]
    parent = f", aligned onto {report['parent']}" if report["parent"] else ""
    typer.echo(f"{report['n_items']:,} items; {len(sizes) - 1} levels x {sizes[:-1]} codes + suffix {sizes[-1]}; "
               f"{report['tokenizer'].get('kind', '?')} on parts {report['window']}{parent}")
    typer.echo(f"collision rate before suffix: {stats['collision_rate']:.1%}; largest group: {stats['max_group_size']} items")
    typer.echo("utilisation per level: " + "  ".join(f"L{i + 1} {u:.1%}" for i, u in enumerate(stats["utilisation"])))
    typer.echo("distinct prefixes by length: " + "  ".join(f"{d:,}" for d in stats["distinct_prefixes"]))
    if report["alignment"]:
        _print_alignment(report["alignment"])
    for sample in report["samples"]:
        shown = "; ".join(e["item_id"] + (f" {e['title'][:40]!r}" if e["title"] else "") for e in sample["examples"])
        typer.echo(f"  code {sample['code']:>4} ({sample['items']:,} items): {shown}")


@app.command("align")
def align_tables(
    legacy: TableArg,
    refreshed: TableArg,
    out: OutOpt,
    method: Annotated[Literal["hungarian", "greedy"], typer.Option("--method", help="Exact (hungarian) or greedy matching per level.")] = "hungarian",
    as_json: JsonOpt = False,
) -> None:
    """Relabel REFRESHED's codes onto LEGACY's vocabulary, level by level, and save the aligned table.

    Example: freshsid sids align runs/beauty/sids-0-8 runs/beauty/sids-0-9 --method hungarian --out runs/beauty/sids-aligned
    """
    from freshsid.api import align
    from freshsid.sid.table import SidTable

    table = align(SidTable.load(legacy), SidTable.load(refreshed), method=method)
    report = table.meta["stats"]["alignment"]
    table.save(out)
    if as_json:
        print_json(report)
        return
    _print_alignment(report)
    typer.echo(f"-> {out}")


def _print_alignment(report: dict[str, Any]) -> None:
    typer.echo(f"alignment ({report['method']}) over {report['common_items']:,} common items, share keeping its legacy code:")
    for level in report["levels"]:
        typer.echo(f"  level {level['level'] + 1}: {level['kept_before']:.1%} before -> {level['kept_after']:.1%} after")
    typer.echo(f"  whole SID: {report['sid_agreement_before']:.1%} before -> {report['sid_agreement_after']:.1%} after")
