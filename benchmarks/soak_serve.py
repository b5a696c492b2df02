"""Soak: `freshsid serve` under steady traffic through scheduled refreshes, operators' hands and rollbacks.

A synthetic log grows in slices; release r0001 is built on the first one (tiny preset),
then `freshsid refresh --if-due --threshold 0 --promote` runs on each later slice at its
scheduled time (a real refresh in its own process, as a timer would start it). While the
last one trains, an operator runs `freshsid release rollback`: the refresh must end
superseded (exit 5), its candidate unpromoted, the rollback kept. Then an operator
hand-edits CURRENT.json into something that is not a pointer (`{"current": 5}`) and
restores it: the server must refuse it once and keep serving. At the end `freshsid
release rollback` again. All the while a client sends POST /recommend at a steady rate
to a `freshsid serve` subprocess on 127.0.0.1. Reported: requests sent and failed, the
releases that answered, the server's RSS after warm-up and at the end, the swap lines
the server logged (one per promotion and one per rollback) and its refusals (one for
the hand-edited pointer). Bounded: the whole run stops after --max-seconds.

    python benchmarks/soak_serve.py --out runs/soak --rate 40

Prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

from bench_serve import SRC, Server
from freshsid.data.synthetic import SyntheticConfig, write_synthetic
from freshsid.serve.release import Releases

WORLD = SyntheticConfig(n_users=400, n_items=150, n_events=9000, n_communities=5)
SLICES = (70, 80, 90, 100)  # percent of the log: the first builds r0001, each later one is a refresh


def freshsid(*args: object) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "freshsid", "--no-progress", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 3, 4, 5):
        raise RuntimeError(f"freshsid {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


def build(out: Path) -> tuple[Path, dict[int, Path], Path]:
    files = write_synthetic(WORLD, out / "world")
    events = pl.read_parquet(files.interactions).sort("timestamp", maintain_order=True)
    logs = {}
    for share in SLICES:
        logs[share] = out / f"logs-{share}.parquet"
        events.head(len(events) * share // 100).write_parquet(logs[share])
    opts = ["--logs", logs[SLICES[0]], "--items", files.items, "--drop-duplicates"]
    freshsid("embed", "collab", *opts, "--parts", "0:10", "--dim", "16", "--epochs", "2", "--preset", "tiny",
             "--out", out / "emb")
    freshsid("sids", "build", *opts, "--embeddings", out / "emb", "--parts", "0:10", "--tokenizer", "rqkmeans",
             "--levels", "2", "--codebook-size", "8", "--suffix-size", "64", "--preset", "tiny", "--out", out / "sids")
    freshsid("retriever", "train", *opts, "--sids", out / "sids", "--parts", "0:10", "--preset", "tiny", "--epochs", "1",
             "--out", out / "base")
    root = out / "releases"
    freshsid("release", "create", *opts, "--checkpoint", out / "base", "--sids", out / "sids", "--out", root, "--promote")
    return root, logs, files.items


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def traffic(base: str, users: list[str], rate: float, stop: asyncio.Event, log: list) -> None:
    """POST /recommend at ``rate`` a second until ``stop``; each answer's (status, release) into ``log``."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async def one(i: int) -> None:
            try:
                r = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": 10})
                log.append((r.status_code, r.json().get("release")))
            except httpx.HTTPError as exc:
                log.append((type(exc).__name__, None))

        tasks, i, started = [], 0, time.perf_counter()
        while not stop.is_set():
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        await asyncio.gather(*tasks)


async def soak(root: Path, logs: dict[int, Path], items: Path, args: argparse.Namespace, server: Server) -> dict:
    users = Releases(root).load_current().histories["user_id"].to_list()
    stop, log = asyncio.Event(), []
    load = asyncio.create_task(traffic(server.base, users, args.rate, stop, log))
    deadline = time.monotonic() + args.max_seconds
    await asyncio.sleep(args.warmup)
    rss_before, schedule = rss_mb(server.proc.pid), []
    for share in SLICES[1:]:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(args.every)
        refresh = asyncio.create_task(asyncio.to_thread(
            freshsid, "refresh", "--logs", logs[share], "--items", items, "--drop-duplicates", "--releases", root,
            "--preset", "tiny", "--metric", "recall@20", "--tolerance", "1.0", "--promote", "--if-due", "--threshold",
            "0"))
        step: dict = {"refresh": share}
        if share == SLICES[-1]:  # an operator rolls back while it trains
            while _last_refresh(root) != "running" and not refresh.done():
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            step["rollback_while_training"] = (await asyncio.to_thread(freshsid, "release", "rollback", root)).strip()
        step.update(said=(await refresh).splitlines()[0], outcome=_last_refresh(root), current=Releases(root).current)
        schedule.append(step)
    await asyncio.sleep(args.every)
    pointer = root / "CURRENT.json"  # an operator's hand edit, then the pointer restored
    saved = pointer.read_bytes()
    pointer.write_text('{"current": 5, "previous": []}')
    await asyncio.sleep(args.every)
    pointer.write_bytes(saved)
    schedule.append({"hand_edited_pointer": '{"current": 5}', "restored": Releases(root).current})
    await asyncio.sleep(args.every)
    schedule.append({"rollback": (await asyncio.to_thread(freshsid, "release", "rollback", root)).strip()})
    await asyncio.sleep(args.every)
    stop.set()
    await load
    return {"requests": len(log), "failed": sum(status != 200 for status, _ in log),
            "answered_by": sorted({release for status, release in log if status == 200}),
            "rss_mb_after_warmup": round(rss_before, 1), "rss_mb_at_end": round(rss_mb(server.proc.pid), 1),
            "schedule": schedule}


def _last_refresh(root: Path) -> str | None:
    try:
        return json.loads((root / "last-refresh.json").read_text()).get("outcome")
    except (OSError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=40.0, help="requests a second")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between scheduled events")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    started = time.perf_counter()
    root, logs, items = (args.out / "releases", {s: args.out / f"logs-{s}.parquet" for s in SLICES},
                         args.out / "world" / "items.parquet")
    if Releases(root).current is None:
        root, logs, items = build(args.out)
    else:  # a rerun: back to r0001 and its releases only
        subprocess.run(["rm", "-rf", *[str(Releases(root).path(i)) for i in Releases(root).ids()[1:]]], check=True)
        for name in ("CURRENT.json", "last-refresh.json"):
            (root / name).unlink(missing_ok=True)
        Releases(root).promote("r0001")
    server_log = args.out / "server.log"
    server = Server(root, beam=20, batching=True, log=server_log, poll=0.5)
    try:
        summary = asyncio.run(soak(root, logs, items, args, server))
    finally:
        server.stop()
    lines = [json.loads(line) for line in server_log.read_text().splitlines() if line.startswith("{")]
    summary["swaps_logged"] = [(e["previous"], e["release"]) for e in lines if e.get("event") == "swap"]
    summary["refusals_logged"] = [e["reason"][:60] for e in lines if e.get("event") == "release_refused"]
    summary["rss_change"] = round(summary["rss_mb_at_end"] / summary["rss_mb_after_warmup"] - 1, 4)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
