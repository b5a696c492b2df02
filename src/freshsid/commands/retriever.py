"""``freshsid retriever``: train, fine-tune, evaluate and query the generative retriever."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from freshsid.commands.common import (
    BASE,
    GAP,
    TEST,
    BeamOpt,
    CheckpointOpt,
    DataSource,
    DeviceOpt,
    JsonOpt,
    KsOpt,
    MaxUsersOpt,
    OutOpt,
    PresetOpt,
    SeedOpt,
    SidsOpt,
    configure,
    data_options,
    experiment_preset,
    load_split,
    parse_ks,
    print_json,
    show_progress,
    use_device,
)
from freshsid.config import DEFAULT_BEAM
from freshsid.data.temporal import Window
from freshsid.errors import FreshsidError

if TYPE_CHECKING:  # kept out of module import so that --help never loads torch or polars
    from freshsid.data.interactions import Interactions
    from freshsid.sid.table import SidTable

app = typer.Typer(
    cls=TyperGroup,
    help="Train, fine-tune, evaluate and query the generative retriever.\n\n"
    "Example: freshsid retriever train --dataset amazon-beauty --sids runs/beauty/sids-0-8 --parts 0:8 --out runs/beauty/base",
    no_args_is_help=True,
)
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1, help="Most epochs (default: the preset's).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Windows per step (default: the preset's).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default: the preset's).")]


@app.command("train")
@data_options()
def train(
    data: DataSource,
    sids: SidsOpt,
    out: OutOpt,
    parts: Annotated[str, typer.Option("--parts", help="Half-open range of time parts to train on, START:STOP.")] = BASE,
    preset: PresetOpt = "cpu",
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    recent_parts: Annotated[int | None, typer.Option(
        "--recent-parts", min=0, help="Then train again on the last this many parts of --parts, with the preset's "
                                      "fine-tune schedule (default: the preset's; 0: no recency pass).")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train a retriever from scratch on the events of --parts, over the SIDs of --sids.

    Example: freshsid retriever train --dataset amazon-beauty --sids runs/beauty/sids-0-8 --parts 0:8 --preset cpu --out runs/beauty/base

    Two processes (DDP; gloo on CPU, nccl on GPU): torchrun --nproc-per-node 2 -m freshsid -- retriever train ... (same options)
    """
    from freshsid.api import GenerativeRetriever
    from freshsid.sid.table import SidTable

    use_device(device, ranks=True)
    exp = experiment_preset(preset)
    train_config = configure(exp.fit, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    window = Window.parse(parts)
    table = SidTable.load(sids)
    split = load_split(data, table)
    retriever = GenerativeRetriever(model=exp.retriever, fit_config=train_config, finetune_config=exp.finetune,
                                    recent_parts=exp.recent_parts if recent_parts is None else recent_parts,
                                    max_history=exp.protocol.max_history)
    retriever.fit(split, table, window=window, out=out, progress=show_progress())
    _print_trained(retriever.manifest_, out)


@app.command("finetune")
@data_options()
def finetune(
    data: DataSource,
    checkpoint: CheckpointOpt,
    sids: SidsOpt,
    out: OutOpt,
    parts: Annotated[str, typer.Option("--parts", help="Parts whose events carry the loss, START:STOP.")] = GAP,
    preset: Annotated[str, typer.Option("--preset", help="Fine-tuning schedule: tiny, cpu or paper.")] = "cpu",
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    remap_from: Annotated[Path | None, typer.Option(
        "--remap-from", help="The checkpoint's own SID table: first carry its code embeddings onto the codes of --sids "
                             "(each new code starts as the mean of its items' old codes).")] = None,
    remap_levels: Annotated[int | None, typer.Option(
        "--remap-levels", min=1, help="Levels carried with --remap-from (default: the preset's recipe's, every "
                                      "semantic level when it carries none); the recipe's mixing applies.")] = None,
) -> None:
    """Warm-start from --checkpoint and train on the events of --parts, over the SIDs of --sids.

    --sids must have the checkpoint's shape: the legacy table, or a refreshed one aligned to it.

    Example: freshsid retriever finetune --checkpoint runs/beauty/base --sids runs/beauty/sids-aligned --dataset amazon-beauty --parts 8:9 --out runs/beauty/ft-aligned

    Carry the code embeddings over first (the remap recipes): ... --sids runs/beauty/sids-aligned --remap-from runs/beauty/sids-0-8 --out runs/beauty/ft-remapped
    """
    from freshsid.api import GenerativeRetriever
    from freshsid.sid.table import SidTable

    if remap_levels is not None and remap_from is None:
        raise FreshsidError("--remap-levels needs --remap-from, the checkpoint's own SID table.")
    use_device(device, ranks=True)
    config = experiment_preset(preset)
    train_config = configure(config.finetune, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    table = SidTable.load(sids)
    spoken = table if remap_from is None else SidTable.load(remap_from)
    retriever = GenerativeRetriever.load(checkpoint, spoken).set_params(finetune_config=train_config,
                                                                        recipe=config.recipe)
    levels = None
    if remap_from is not None:  # carry what the recipe carries, every level when it carries none
        levels = remap_levels or config.how.carried_levels(spoken.n_levels) or "all"
    tuned = retriever.finetune(load_split(data, table), table, window=Window.parse(parts), out=out,
                               remap_levels=levels, progress=show_progress())
    _print_trained(tuned.manifest_, out)


def _print_trained(manifest, out: Path) -> None:
    info, compute, history = manifest.info, manifest.compute, manifest.info["history"]
    best = next((h for h in history if h["epoch"] == info["best_epoch"]), history[-1])
    typer.echo(f"{len(history)} epochs on {info['train_windows']:,} windows; best epoch {info['best_epoch'] + 1} "
               f"(valid loss {best['valid_loss']:.4f}); {compute['retriever_flops'] / 1e12:.3g} TFLOPs, "
               f"{compute['retriever_seconds']:.1f} s -> {out}")


@app.command("eval")
@data_options()
def evaluate(
    data: DataSource,
    checkpoint: CheckpointOpt,
    sids: SidsOpt,
    test: Annotated[str, typer.Option("--test", help="Test window of parts, START:STOP.")] = TEST,
    allowed: Annotated[str, typer.Option("--allowed", help="Decoding may return the items seen in these parts.")] = BASE,
    beam: BeamOpt = DEFAULT_BEAM,
    max_users: MaxUsersOpt = None,
    ks: KsOpt = None,
    as_json: JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result to this JSON file.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Recall@K and nDCG@K of a checkpoint on the test window (users with an earlier event).

    Example: freshsid retriever eval --checkpoint runs/beauty/base --sids runs/beauty/sids-0-8 --dataset amazon-beauty --test 9:10 --allowed 0:8 --json

    Users split across processes: torchrun --nproc-per-node 2 -m freshsid -- retriever eval ... (same metrics as one process)
    """
    from freshsid.api import GenerativeRetriever
    from freshsid.artifacts import write_json_atomic
    from freshsid.sid.table import SidTable

    runtime = use_device(device, ranks=True)
    cutoffs, test_window, allowed_window = parse_ks(ks), Window.parse(test), Window.parse(allowed)
    table = SidTable.load(sids)
    retriever = GenerativeRetriever.load(checkpoint, table, beam=beam)
    split = load_split(data, table)
    metrics = retriever.evaluate(split, test=test_window, allowed=allowed_window, ks=cutoffs, max_users=max_users)
    record = {"metrics": metrics, "checkpoint": str(checkpoint), "sids": str(sids), "test": str(test_window),
              "allowed": str(allowed_window), "beam": beam, "max_users": max_users}
    if out is not None and runtime.is_main:
        write_json_atomic(out, record)
    if as_json:
        print_json(record)
        return
    rows = Table("K", "Recall@K", "nDCG@K", title=f"test {test_window}, items of {allowed_window}")
    for k in cutoffs:
        rows.add_row(str(k), f"{metrics[f'recall@{k}']:.4f}", f"{metrics[f'ndcg@{k}']:.4f}")
    Console().print(rows)


@app.command("recommend")
@data_options()
def recommend(
    data: DataSource,
    checkpoint: CheckpointOpt,
    sids: SidsOpt,
    user: Annotated[str, typer.Option("--user", help="An original user id of the logs.", show_default=False)],
    k: Annotated[int, typer.Option("--k", min=1, help="Items to return.")] = 10,
    allowed: Annotated[str | None, typer.Option("--allowed", help="Only items seen in these parts (default: every item of --sids).")] = None,
    beam: BeamOpt = DEFAULT_BEAM,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Top items for one user, from the user's latest events: original item ids and titles.

    The beam is fixed (--beam), not tied to --k, so the top items agree whatever --k asks for.

    Example: freshsid retriever recommend --checkpoint runs/beauty/base --sids runs/beauty/sids-0-8 --dataset amazon-beauty --user A1YJEY40YUW4SE --k 10
    """
    from freshsid.api import GenerativeRetriever
    from freshsid.data.temporal import last_items
    from freshsid.sid.table import SidTable

    if k > beam:
        raise FreshsidError(f"--k {k} is more than the beam width {beam}; pass --beam {k} or more.")
    use_device(device)
    window = None if allowed is None else Window.parse(allowed)
    table = SidTable.load(sids)
    retriever = GenerativeRetriever.load(checkpoint, table, beam=beam)
    split = load_split(data, table)
    logs = split.logs
    users = np.array([user_index(logs, user)])
    history = last_items(logs.user, logs.item, users, retriever.max_history)
    items, scores = retriever.recommend(history, users, k=k,
                                        allowed_items=None if window is None else split.allowed_items(window))
    titles = logs.items["title"].to_list()
    rows = [{"rank": r + 1, "item_id": str(logs.item_ids[i]), "title": titles[i], "score": float(s)}
            for r, (i, s) in enumerate((i, s) for i, s in zip(items[0], scores[0]) if i >= 0)]
    if as_json:
        print_json({"user": user, "items": rows})
        return
    out = Table("rank", "item", "title", "log-prob", title=f"user {user}")
    for row in rows:
        out.add_row(str(row["rank"]), row["item_id"], row["title"][:60], f"{row['score']:.3f}")
    Console().print(out)


def user_index(logs: Interactions, user_id: str) -> int:
    """The dense index of an original user id given on the command line."""
    hits = np.flatnonzero(logs.user_ids.astype(str) == user_id)
    if len(hits) == 0:
        raise FreshsidError(f"User {user_id!r} has no events in {logs.name}; pass an original user id from the logs.")
    return int(hits[0])
