"""Batch recommendations: every (or the listed) user's top K from the current release, to parquet.

Users are decoded in chunks; each chunk is written to its own file beside the output
(``.<out>.parts/``) as soon as it is done, so memory stays bounded by one chunk and a
killed job resumes from the chunks it finished. The parts become one parquet file
(user_id, rank, item_id, score) at the end.

Under torchrun every rank walks the same chunks and decodes its share of each (the
release's :class:`~freshsid.retriever.pipeline.Recommender` deals out the decode
batches); rank 0 alone holds the lock and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from freshsid.artifacts import fingerprint_of, output_lock, write_json_atomic
from freshsid.errors import FreshsidError
from freshsid.progress import progress_bar
from freshsid.runtime import current
from freshsid.serve.engine import Engine
from freshsid.serve.release import Releases


@dataclass(frozen=True)
class BatchResult:
    release_id: str
    users: int
    rows: int
    seconds: float  # this invocation's, resumed chunks excluded
    resumed_chunks: int


def recommend_batch(releases: Releases, out: Path, *, users: list[str] | None, k: int, beam: int, chunk: int = 1024,
                    progress: bool = True) -> BatchResult:
    """Write the top ``k`` items of each user (default: every user of the release) to ``out``."""
    started = time.perf_counter()
    out = Path(out)
    engine = Engine(releases.load_current(), beam=beam)
    user_ids = engine.user_ids() if users is None else list(users)
    if not user_ids:
        raise FreshsidError("No user to recommend for; list at least one user_id.")
    engine.for_users(user_ids)  # an unknown user is refused before any work
    parts = out.parent / f".{out.name}.parts"
    job = {"release": engine.release_id, "users": fingerprint_of(user_ids), "k": k, "beam": beam, "chunk": chunk}
    rt = current()
    with output_lock(out) if rt.is_main else contextlib.nullcontext():
        if rt.is_main:
            if parts.exists() and _job(parts) != job:
                shutil.rmtree(parts)  # another job's chunks
            parts.mkdir(parents=True, exist_ok=True)
            write_json_atomic(parts / "job.json", job)
        rt.barrier()
        starts = range(0, len(user_ids), chunk)
        # Decided before anything is written, so that every rank walks the same chunks.
        done = [(parts / f"part-{index:06d}.parquet").exists() for index in range(len(starts))]
        rt.barrier()
        with progress_bar("recommend", total=len(user_ids), enabled=progress and rt.is_main) as bar:
            for index, start in enumerate(starts):
                batch = user_ids[start : start + chunk]
                if not done[index]:
                    _write_chunk(engine, batch, k, parts / f"part-{index:06d}.parquet", write=rt.is_main)
                bar.advance(len(batch))
        rows = 0
        if rt.is_main:
            rows = _concatenate([parts / f"part-{i:06d}.parquet" for i in range(len(starts))], out)
            shutil.rmtree(parts)
        rt.barrier()
    return BatchResult(engine.release_id, len(user_ids), rows, time.perf_counter() - started, sum(done))


def _job(parts: Path) -> dict | None:
    try:
        return json.loads((parts / "job.json").read_text())
    except (OSError, ValueError):
        return None


def _write_chunk(engine: Engine, user_ids: list[str], k: int, part: Path, *, write: bool = True) -> None:
    histories, users = engine.for_users(user_ids)
    recs = engine.recommend(histories, users, [k] * len(user_ids), [False] * len(user_ids))
    if not write:
        return
    frame = pl.DataFrame(
        {"user_id": [u for u, items in zip(user_ids, recs, strict=True) for _ in items],
         "rank": [rank + 1 for items in recs for rank in range(len(items))],
         "item_id": [r.item_id for items in recs for r in items],
         "score": [r.score for items in recs for r in items]},
        schema={"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32},
    )
    tmp = part.with_suffix(".tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, part)


def _concatenate(parts: list[Path], out: Path) -> int:
    """Stream the chunk files into ``out`` (atomically); returns the row count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    rows = 0
    writer = None
    try:
        for part in parts:
            table = pq.read_table(part)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return rows
