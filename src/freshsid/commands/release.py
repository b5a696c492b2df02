"""``freshsid release``: bundle a checkpoint with its SIDs and catalog, list, promote, roll back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from freshsid.commands.common import (
    CheckpointOpt,
    DataSource,
    DeviceOpt,
    JsonOpt,
    SidsOpt,
    configure,
    data_options,
    experiment_preset,
    load_split,
    print_json,
    show_progress,
    use_device,
)
from freshsid.errors import FreshsidError

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
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="The collab embeddings folder (freshsid embed "
                                                    "collab) the --sids table was coded from: the release carries them "
                                                    "and the table's tokenizer, which warm recipes and `refresh --mode "
                                                    "incremental` continue.", show_default=False)] = None,
    promote: Annotated[bool, typer.Option("--promote", help="Make the new release current.")] = False,
) -> None:
    """Bundle --checkpoint, its SID table and the catalog of the items it codes into a new release under --out.

    Its parent is the current release. The release has seen the logs' events up to the end of the checkpoint's
    training window; `freshsid refresh` learns from the ones after. Prints the new release id.

    Example: freshsid release create --checkpoint runs/beauty/base --sids runs/beauty/sids-0-8 --embeddings runs/beauty/emb-0-8 --dataset amazon-beauty --out releases --promote
    """
    from freshsid.api import GenerativeRetriever
    from freshsid.serve.release import Releases, carried_build
    from freshsid.sid.table import SidTable

    table = SidTable.load(sids)
    build = None if embeddings is None else carried_build(embeddings, table)
    retriever = GenerativeRetriever.load(checkpoint, table)
    split = load_split(data, table)
    span = retriever.trained_window_
    split.events(span)  # refuses a window past the logs' last part
    releases = Releases(out)
    release_id = releases.create(retriever, split.logs, until_event=int(split.bounds[span.stop]),
                                 build=build)
    if promote:
        releases.promote(release_id)
    typer.echo(f"{release_id}{' (current)' if promote else ''} -> {releases.path(release_id)}")


@app.command("list")
def list_releases(root: RootArg, as_json: JsonOpt = False) -> None:
    """Every release of ROOT, oldest first: parent, items, training windows, how a refresh made it, metrics; the
    current one marked.

    Example: freshsid release list releases
    """
    from freshsid.serve.ops import manifests
    from freshsid.serve.release import Releases

    releases = Releases(root)
    current = releases.current
    infos, damaged = manifests(releases)
    rows = []
    for release_id in releases.ids():
        if release_id in damaged:
            rows.append({"id": release_id, "current": release_id == current, "damaged": damaged[release_id]})
            continue
        info = infos[release_id].info
        rows.append({"id": release_id, "current": release_id == current, "parent": info.get("parent_release"),
                     "items": info.get("n_items"), "history": info["data"].get("history_window"),
                     "target": info["data"].get("target_window"), "refresh": info.get("refresh"),
                     "metrics": info.get("metrics", {})})
    if as_json:
        print_json({"current": current, "releases": rows})
        return
    table = Table("id", "parent", "items", "trained on (history / targets)", "refresh", "metrics",
                  title=f"releases in {root}")
    for row in rows:
        name = row["id"] + (" *" if row["current"] else "")
        if "damaged" in row:
            table.add_row(name, "—", "—", "damaged", "—", row["damaged"])
            continue
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items())
        made = f"{row['refresh']['mode']} ({row['refresh']['recipe']})" if row["refresh"] else "—"
        table.add_row(name, row["parent"] or "—", f"{row['items']:,}", f"{row['history']} / {row['target']}", made,
                      metrics or "—")
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
    """Make the release promoted before the current one current again (its files are checked first).

    Example: freshsid release rollback releases
    """
    from freshsid.serve.release import Releases

    typer.echo(f"current: {Releases(root).rollback()}")


@app.command("prune")
def prune(root: RootArg, keep: Annotated[int, typer.Option("--keep", min=1, help="How many of the newest releases to "
                                                             "keep.")] = 7) -> None:
    """Remove all but the --keep newest releases of ROOT; the current release, its parent and the release a rollback
    would return to are always kept.

    Example: freshsid release prune releases --keep 7
    """
    from freshsid.serve.ops import prune as run
    from freshsid.serve.release import Releases

    removed = run(Releases(root), keep)
    typer.echo(f"removed {', '.join(removed)}" if removed else "nothing to remove")


@data_options()
def status(
    data: DataSource,
    releases_root: Annotated[Path, typer.Argument(help="A releases root.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """What RELEASES serves: the current release, its lineage, age, training windows, how a refresh made it, gate
    figures and the last refresh; with logs (--logs/--dataset), the staleness signal now (share of the events since the release on items it
    cannot code, what `refresh --if-due` reads).

    Example: freshsid status releases --logs logs-until-today.parquet --items items.parquet
    """
    from freshsid.serve.ops import status as read
    from freshsid.serve.release import Releases

    report = read(Releases(releases_root), data.load() if data.given else None)
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        typer.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@data_options()
def refresh(
    data: DataSource,
    releases_root: Annotated[Path, typer.Option("--releases", help="The releases root whose current release is refreshed.",
                                                show_default=False)],
    preset: Annotated[str, typer.Option("--preset", help="Sizes and schedules: tiny, cpu or paper.")] = "cpu",
    recipe: Annotated[str | None, typer.Option("--recipe", help="How the SIDs are rebuilt (default: the preset's).")] = None,
    mode: Annotated[Literal["aligned", "incremental"], typer.Option("--mode", help="aligned: SIDs rebuilt and aligned to "
                                                                    "the release's; incremental: the release's SIDs "
                                                                    "kept, new items coded by its frozen tokenizer.")
                    ] = "aligned",
    holdout: Annotated[float, typer.Option("--holdout", min=0.01, max=0.5, help="Share of the returning users of the new "
                                           "events held out to validate on.")] = 0.1,
    metric: Annotated[str, typer.Option("--metric", help="The gate's metric on the held-out users.")] = "recall@100",
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, max=1.0, help="How much worse (relative) the "
                                             "candidate may score and still be promoted.")] = 0.01,
    promote: Annotated[bool, typer.Option("--promote", help="Promote the candidate if it passes the gate.")] = False,
    if_due: Annotated[bool, typer.Option("--if-due", help="Refresh only when the share of the events since the release "
                                         "on items it cannot code reaches --threshold.")] = False,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="The --if-due threshold.")] = 0.05,
    device: DeviceOpt = "auto",
) -> None:
    """Refresh the current release on the logs up to now: new SIDs aligned to the release's, a warm-start fine-tune on
    the events since it, a gate on held-out users; writes the candidate as a new release.

    A recipe that continues the SASRec or the tokenizer (the cpu preset's remap-3) and --mode incremental (the
    release's SIDs kept, the items new since coded by its frozen tokenizer) continue the SID build the release
    carries: create the first release with `freshsid release create --embeddings`.

    The events since the release are found by time against what it saw; events dated before its last second that it
    never saw are refused (counted, kept as history). Exit codes, for a timer: 0 refreshed (the candidate passes the
    gate), 3 not due (--if-due), 4 refused by the gate, 5 superseded (with --promote: an operator promoted or rolled
    back while it trained, so the candidate was kept unpromoted), 2 an error. The outcome is left in
    RELEASES/last-refresh.json and logged as one JSON line on stderr; a refresh that was killed reads "interrupted"
    there, and the next one removes its scratch.

    Example: freshsid refresh --releases releases --logs logs-until-today.parquet --items items.parquet --promote --if-due

    Frozen vocabulary: freshsid refresh --mode incremental --releases releases --logs logs-until-today.parquet --items items.parquet --promote
    """
    import freshsid
    from freshsid.serve.ops import OUTCOMES
    from freshsid.serve.refresh import NotDue
    from freshsid.serve.release import Releases

    if not re.fullmatch(r"(recall|ndcg)@[1-9][0-9]*", metric):
        raise FreshsidError(f"--metric {metric!r} is not recall@K or ndcg@K, e.g. recall@100.")
    config = configure(experiment_preset(preset), recipe=recipe, device=device)
    use_device(device)
    outcome = freshsid.refresh(Releases(releases_root), data.load(), config, mode=mode, holdout=holdout,
                               metric=metric, tolerance=tolerance, promote=promote,
                               if_due=threshold if if_due else None, progress=show_progress())
    if isinstance(outcome, NotDue):
        typer.echo(f"not due: {outcome.signal:.1%} of the {outcome.new_events:,} events since release "
                   f"{outcome.release_id} are on items it cannot code (threshold {outcome.threshold:.1%})")
        raise typer.Exit(OUTCOMES["not_due"])
    verdict = ("promoted" if outcome.promoted else f"passes the gate, not promoted: superseded by "
               f"{outcome.superseded_by}, made current while it trained" if outcome.superseded_by else
               "passes the gate" if outcome.passes else "fails the gate")
    typer.echo(f"{outcome.release_id}: {verdict} ({outcome.mode} refresh)")
    typer.echo(f"staleness: {outcome.signal:.1%} of the new events on items the release cannot code")
    typer.echo(f"new events: {outcome.new_events:,} taken, {outcome.late_events:,} refused (late: dated before the "
               f"release's last second, kept as history); validation users held out: {outcome.validation_users:,}; "
               f"items added: {outcome.items_added:,}")
    kept = "  ".join(f"L{i + 1} {k:.1%}" for i, k in enumerate(outcome.codes_kept))
    typer.echo(f"codes kept per level{' after alignment' if outcome.mode == 'aligned' else ''}: {kept}")
    typer.echo(f"{outcome.metric}: current {outcome.current_score:.4f} -> candidate {outcome.candidate_score:.4f}")
    c = outcome.compute
    typer.echo(f"compute: fine-tune {c.get('retriever_flops', 0) / 1e12:.3g} TFLOPs in {c.get('retriever_seconds', 0):.1f} s; "
               f"SASRec {c.get('embedding_seconds', 0):.1f} s, tokenizer {c.get('tokenizer_seconds', 0):.1f} s")
    if outcome.superseded_by:
        raise typer.Exit(OUTCOMES["superseded"])
    if not outcome.passes:
        raise typer.Exit(OUTCOMES["refused_by_gate"])


def recommend_batch(
    releases_root: Annotated[Path, typer.Option("--releases", help="The releases root; its current release answers.",
                                                show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The parquet file to write (user_id, rank, item_id, score).",
                                      show_default=False)],
    users: Annotated[Path | None, typer.Option("--users", help="A text file with one user_id a line (default: every "
                                               "user of the release).")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Items per user.")] = 100,
    beam: Annotated[int | None, typer.Option("--beam", min=1, help="Beam width (default: --k).")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=1, help="Users decoded and written together.")] = 1024,
    device: DeviceOpt = "auto",
) -> None:
    """Every (or each listed) user's top K items from the current release, streamed in chunks to one parquet file.

    A run that is stopped resumes from the chunks it finished.

    Example: freshsid recommend-batch --releases releases --k 100 --out recs.parquet

    Users split across processes: torchrun --nproc-per-node 2 -m freshsid -- recommend-batch --releases releases --out recs.parquet
    """
    from freshsid.artifacts import check_writable
    from freshsid.data.tables import check_readable
    from freshsid.serve.batch import recommend_batch as run
    from freshsid.serve.release import Releases

    use_device(device, ranks=True)
    if out.is_dir():
        raise FreshsidError(f"--out {out} is a folder; pass the path of a parquet file to write.")
    check_writable(out.absolute().parent)
    if beam is not None and beam < k:
        raise FreshsidError(f"--beam {beam} is below --k {k}; pass --beam {k} or more.")
    listed = None
    if users is not None:
        check_readable(users)
        try:
            listed = [line.strip() for line in users.read_text().splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise FreshsidError(f"{users} is not UTF-8 text; list one user_id a line.") from None
    result = run(Releases(releases_root), out, users=listed, k=k, beam=beam or k, chunk=chunk, progress=show_progress())
    resumed = f" ({result.resumed_chunks} chunks resumed)" if result.resumed_chunks else ""
    typer.echo(f"{result.users:,} users, {result.rows:,} rows from release {result.release_id} in {result.seconds:.1f} s"
               f"{resumed} -> {out}")


def serve(
    releases_root: Annotated[Path, typer.Option("--releases", help="The releases root; its current release serves.",
                                                show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    config: Annotated[Path | None, typer.Option("--config", help="A JSON or TOML file of serve settings (beam, batching, "
                                                "request limits and timeouts); the options below override it.")] = None,
    beam: Annotated[int | None, typer.Option("--beam", min=1, help="Beam width; requests may ask for up to this many "
                                             "items [default: 100].")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", min=1, help="Requests decoded together at most "
                                                  "[default: 32].")] = None,
    max_wait_ms: Annotated[float | None, typer.Option("--max-wait-ms", min=0.0, help="How long a request waits for others "
                                                      "to batch with [default: 5].")] = None,
    batching: Annotated[bool | None, typer.Option("--batching/--no-batching", help="Micro-batch concurrent requests "
                                                  "[default: on].", show_default=False)] = None,
    poll: Annotated[float | None, typer.Option("--poll", min=0.05, help="Seconds between checks of the current release "
                                               "[default: 1].")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, help="Torch threads of the decoding thread (0: one "
                                                "less than the process's, at least 1) [default: 0].")] = None,
    compile_step: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the decoding step "
                                                      "when a release loads [default: off].", show_default=False)] = None,
    decoder: Annotated[str | None, typer.Option("--decoder", help="Where the beam search runs: thread (beside the event "
                                                "loop) or process (its own, no GIL shared) [default: thread].",
                                                show_default=False)] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve recommendations from the current release over HTTP; a newly promoted release is swapped in live.

    POST /recommend {"user_id": ...} or {"history": [item ids]}, "k", "exclude_seen"; GET /healthz, /release, /metrics
    (Prometheus); POST /admin/reload. Bodies, histories and ids are bounded and slow clients cut off (--config:
    max_body_bytes, max_history, max_id_chars, header_timeout_s, body_timeout_s).

    Example: freshsid serve --releases releases --port 8000
    """
    import uvicorn

    from freshsid.serve.config import serve_config
    from freshsid.serve.http import Service, server_config
    from freshsid.serve.release import Releases

    settings = serve_config(config, beam=beam, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching,
                            poll_seconds=poll, threads=threads, compile=compile_step, decoder=decoder)
    use_device(device)
    service = Service(Releases(releases_root), settings)
    uvicorn.Server(server_config(service, host=host, port=port)).run()
