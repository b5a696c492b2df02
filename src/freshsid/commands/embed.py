"""``freshsid embed``: the item embeddings that SID tokenizers quantize."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from typer.core import TyperGroup

from freshsid.commands.common import (
    DataSource,
    OutOpt,
    PresetOpt,
    SeedOpt,
    configure,
    data_options,
    experiment_preset,
    load_split,
    show_progress,
)
from freshsid.data.interactions import Interactions
from freshsid.data.temporal import TemporalSplit, Window

app = typer.Typer(
    cls=TyperGroup,
    help="Item embeddings for SID tokenizers: collaborative (SASRec) or content (text encoder).\n\n"
    "Example: freshsid embed collab amazon-beauty --parts 0:8 --out runs/beauty/embed-0-8",
    no_args_is_help=True,
)
PartsOpt = Annotated[str, typer.Option("--parts", help="Half-open range of time parts to train on, START:STOP.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Folder of cached text vectors (default: .cache/content).")]


@dataclass(frozen=True)
class Embeddings:
    """Item vectors in memory, with what their artifact's manifest records.

    Attributes:
        vectors: (n_items, dim) float32, row i = dense item i of the logs.
        items: (n_covered,) sorted items whose rows mean something.
    """

    vectors: np.ndarray
    items: np.ndarray
    kind: str
    config: dict[str, Any]
    seed: int | None
    compute: dict[str, float]
    window: str

    def save(self, out: Path, logs: Interactions) -> None:
        from freshsid.embed.store import save_embeddings

        save_embeddings(out, self.vectors, kind=self.kind, config=self.config, seed=self.seed,  # type: ignore[arg-type]
                        inputs={"logs": logs.fingerprint}, compute=self.compute, window=self.window, items=self.items)


def train_collab(split: TemporalSplit, window: Window, *, preset: str, dim: int | None = None,
                 epochs: int | None = None, seed: int | None = None) -> Embeddings:
    """SASRec (the preset's config, with overrides) fitted on ``window``: its item table."""
    from freshsid.embed.collab import SASRec

    exp = experiment_preset(preset)
    config = configure(exp.sasrec, dim=dim, max_epochs=epochs)
    seed = exp.seed if seed is None else seed
    model = SASRec(config, random_state=seed, progress=show_progress()).fit(split.logs, split.events(window))
    return Embeddings(model.item_embeddings_, np.flatnonzero(model.trained_items_), "collab", config.model_dump(),
                      seed, {"seconds": model.fit_seconds_, "flops": model.flops_}, str(window))


def encode_content(logs: Interactions, *, cache: Path | None = None) -> Embeddings:
    """Every item's text through the bundled sentence encoder (cached by text)."""
    from freshsid.embed.content import DEFAULT_CACHE, content_embeddings, model_tag

    started = time.perf_counter()
    vectors = content_embeddings(logs, cache_dir=cache or DEFAULT_CACHE, progress=show_progress())
    return Embeddings(vectors, np.arange(len(vectors)), "content", {"encoder": model_tag()}, None,
                      {"seconds": time.perf_counter() - started}, "")


@app.command("collab")
@data_options(dataset="argument")
def collab(
    data: DataSource,
    out: OutOpt,
    parts: PartsOpt = "0:8",
    dim: Annotated[int | None, typer.Option("--dim", help="Embedding size (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Most training epochs (early stopping may end sooner).")] = None,
    seed: SeedOpt = None,
    preset: PresetOpt = "cpu",
) -> None:
    """Train a SASRec-style model on the events of --parts and save its item embeddings.

    Example: freshsid embed collab amazon-beauty --parts 0:8 --out runs/beauty/embed-0-8
    """
    window = Window.parse(parts)
    split = load_split(data)
    emb = train_collab(split, window, preset=preset, dim=dim, epochs=epochs, seed=seed)
    emb.save(out, split.logs)
    _print_saved(emb, out)


@app.command("content")
@data_options(dataset="argument")
def content(data: DataSource, out: OutOpt, cache: CacheOpt = None) -> None:
    """Embed every item's text (title, brand, categories) with the bundled all-MiniLM-L6-v2 encoder.

    Example: freshsid embed content amazon-beauty --out runs/beauty/embed-content
    """
    logs = data.load()
    emb = encode_content(logs, cache=cache)
    emb.save(out, logs)
    _print_saved(emb, out)


def _print_saved(emb: Embeddings, out: Path) -> None:
    n, dim = emb.vectors.shape
    window = f" on parts {emb.window}" if emb.window else ""
    typer.echo(f"{emb.kind} embeddings: {n:,} items x {dim} ({len(emb.items):,} covered){window} "
               f"in {emb.compute['seconds']:.1f} s -> {out}")
