"""The resume state of a retriever training run: everything a killed run needs to finish
with the same weights as an uninterrupted one (model, optimiser, scheduler, every rank's
random state, the data position), written atomically with a record of its run id and
SHA-256, and read back with ``weights_only`` so that a crafted file cannot run code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from freshsid.artifacts import file_sha256, write_json_atomic
from freshsid.runtime import Runtime

STATE_FILE = "state.pt"  # resume state: tensors and plain values only (loaded with weights_only)
STATE_RECORD = "state.json"  # the run id and SHA-256 of STATE_FILE


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}



def rng_state(rt: Runtime) -> list[torch.Tensor]:
    """This rank's random state: the CPU generator's, and its GPU's when on one."""
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(rt.device)] if rt.on_gpu else [])


def set_rng(saved: torch.Tensor | list, rt: Runtime) -> None:
    """Restore this rank's random state (a single CPU state in states of one process)."""
    mine = saved[rt.rank] if isinstance(saved, list) else [saved]
    torch.set_rng_state(mine[0])
    if rt.on_gpu and len(mine) > 1:
        torch.cuda.set_rng_state(mine[1], rt.device)


def save_state(work_dir: Path, run_id: str, state: dict, model, optimizer, scheduler, rng: list) -> None:
    """Atomic write of everything a resume needs, and a record of its run id and hash.
    ``rng``: every rank's random state, in rank order."""
    blob = {**state, "run_id": run_id, "model": cpu_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng}
    tmp = work_dir / f".{STATE_FILE}.tmp"
    torch.save(blob, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, work_dir / STATE_FILE)
    write_json_atomic(work_dir / STATE_RECORD, {"run_id": run_id, "sha256": digest})


def load_state(work_dir: Path, run_id: str) -> dict | None:
    """The resume state of run ``run_id`` in ``work_dir``, or None (start afresh).

    Only tensors, numbers, strings and containers are unpickled (``weights_only``), so a
    crafted file cannot run code; a state whose hash or content does not check out is
    discarded with a message on stderr."""
    path = work_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads((work_dir / STATE_RECORD).read_text())
        if not isinstance(record, dict):
            raise ValueError
    except (OSError, ValueError):
        return _discard(work_dir, f"{STATE_RECORD} is missing or unreadable")
    if record.get("run_id") != run_id:
        return None  # another run's state (other data or settings): this one starts afresh
    if record.get("sha256") != file_sha256(path):
        return _discard(work_dir, f"{STATE_FILE} does not match the hash {STATE_RECORD} records")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the file is not a resume state
        return _discard(work_dir, f"{STATE_FILE} cannot be read safely: {type(exc).__name__}")
    missing = {"run_id", "epoch", "step", "model", "optimizer", "scheduler", "rng", "compute", "history"} - set(state)
    if missing or state["run_id"] != run_id:
        return _discard(work_dir, f"{STATE_FILE} lacks {', '.join(sorted(missing)) or 'its run id'}")
    return state


def _discard(work_dir: Path, reason: str) -> None:
    print(f"warning: discarding the resume state in {work_dir} ({reason}); training starts afresh.", file=sys.stderr)
    return None
