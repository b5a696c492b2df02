"""``freshsid embed``: the item embeddings that SID tokenizers quantize."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from freshsid.commands.common import (
    BASE,
    DataSource,
    DeviceOpt,
    OutOpt,
    PresetOpt,
    SeedOpt,
    configure,
    data_options,
    experiment_preset,
    load_split,
    show_progress,
    use_device,
)
from freshsid.data.temporal import TemporalSplit, Window

if TYPE_CHECKING:  # kept out of module import so that --help stays light
    from freshsid.embed.store import Embeddings

app = typer.Typer(
    cls=TyperGroup,
    help="Item embeddings for SID tokenizers: collaborative (SASRec) or content (text encoder).\n\n"
    "Example: freshsid embed collab amazon-beauty --parts 0:8 --out runs/beauty/embed-0-8",
    no_args_is_help=True,
)
PartsOpt = Annotated[str, typer.Option("--parts", help="Half-open range of time parts to train on, START:STOP.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Folder of cached text vectors (default: content/ in the freshsid cache).")]


def train_collab(split: TemporalSplit, window: Window, *, preset: str, dim: int | None = None,
                 epochs: int | None = None, seed: int | None = None, warm_from: Path | None = None) -> Embeddings:
    """SASRec (the preset's config, with the options given) fitted on ``window``: its item
    table. ``warm_from``: an embeddings folder whose model weights training continues from."""
    from freshsid.embed.collab import collab_embeddings
    from freshsid.embed.store import load_model_state

    exp = experiment_preset(preset)
    config = configure(exp.sasrec, dim=dim, max_epochs=epochs)
    init = None if warm_from is None else load_model_state(warm_from)
    emb, _ = collab_embeddings(split.logs, split.events(window), window=str(window), config=config,
                               seed=exp.seed if seed is None else seed, progress=show_progress(), init_state=init)
    return emb


@app.command("collab")
@data_options(dataset="argument")
def collab(
    data: DataSource,
    out: OutOpt,
    parts: PartsOpt = BASE,
    dim: Annotated[int | None, typer.Option("--dim", help="Embedding size (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Most training epochs (early stopping may end sooner).")] = None,
    seed: SeedOpt = None,
    preset: PresetOpt = "cpu",
    warm_from: Annotated[Path | None, typer.Option("--warm-from", help="An earlier collab embeddings folder of the same dataset: continue training its model (a warm refresh).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train a SASRec-style model on the events of --parts and save its item embeddings (and the model's weights).

    Example: freshsid embed collab amazon-beauty --parts 0:8 --out runs/beauty/embed-0-8

    Warm refresh: freshsid embed collab amazon-beauty --parts 0:9 --warm-from runs/beauty/embed-0-8 --out runs/beauty/embed-0-9

    Two processes (DDP): torchrun --nproc-per-node 2 -m freshsid -- embed collab amazon-beauty --parts 0:8 --out runs/beauty/embed-0-8
    """
    runtime = use_device(device, ranks=True)
    window = Window.parse(parts)
    split = load_split(data)
    emb = train_collab(split, window, preset=preset, dim=dim, epochs=epochs, seed=seed, warm_from=warm_from)
    if runtime.is_main:
        emb.save(out, split.logs.fingerprint)
    runtime.barrier()
    _print_saved(emb, out)


@app.command("content")
@data_options(dataset="argument")
def content(data: DataSource, out: OutOpt, cache: CacheOpt = None) -> None:
    """Embed every item's text (title, brand, categories) with the bundled all-MiniLM-L6-v2 encoder.

    Example: freshsid embed content amazon-beauty --out runs/beauty/embed-content
    """
    logs = data.load()
    from freshsid.embed.content import encode_content

    emb = encode_content(logs, cache_dir=cache, progress=show_progress())
    emb.save(out, logs.fingerprint)
    _print_saved(emb, out)


def _print_saved(emb: Embeddings, out: Path) -> None:
    n, dim = emb.vectors.shape
    window = f" on parts {emb.window}" if emb.window else ""
    typer.echo(f"{emb.kind} embeddings: {n:,} items x {dim} ({len(emb.items):,} covered){window} "
               f"in {emb.compute['seconds']:.1f} s -> {out}")
