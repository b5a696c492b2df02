"""Training the retriever: ``fit`` from scratch and ``finetune`` from a checkpoint.

One loop serves both. Teacher-forced next-SID loss over every item position of
each user window (``freshsid.data.sequences.windows``); fine-tuning restricts the
loss to chosen target events. AdamW with linear warm-up and cosine decay, early
stopping on a validation slice of users carved from the training data, a
checkpoint per epoch and a resume state that makes a killed run finish with
the same weights as an uninterrupted one: model, optimiser, scheduler, torch RNG
and the data position (epoch, step) are saved, and each epoch's shuffle is a pure
function of (seed, epoch).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter

from freshsid.artifacts import Manifest, file_sha256, fingerprint_of, write_json_atomic
from freshsid.config import TrainConfig
from freshsid.data.sequences import Sequences, length_batches
from freshsid.progress import progress_bar
from freshsid.retriever.model import (
    TRAIN_FLOPS_MULTIPLIER,
    Retriever,
    RetrieverConfig,
    build_tokens,
    flops_per_token,
    hash_user,
    save_checkpoint,
)

STATE_FILE = "state.pt"  # resume state: tensors and plain values only (loaded with weights_only)
STATE_RECORD = "state.json"  # the run id and SHA-256 of STATE_FILE


@dataclass
class TrainResult:
    """What a training run produced: the final model (best validation epoch) and its record."""

    model: Retriever
    manifest: Manifest
    compute: dict[str, float]
    history: list[dict[str, float]]


def split_validation(seqs: Sequences, fraction: float, seed: int) -> tuple[Sequences, Sequences | None]:
    """Hold out a random share of *users* (all their windows) for early stopping."""
    if fraction <= 0:
        return seqs, None
    users = np.unique(seqs.users)
    rng = np.random.default_rng(seed)
    held = rng.choice(users, size=max(1, int(round(fraction * len(users)))), replace=False)
    mask = np.isin(seqs.users, held)
    if mask.all():
        return seqs, None
    pick = lambda m: Sequences(seqs.users[m], seqs.items[m], seqs.target[m])  # noqa: E731
    return pick(~mask), pick(mask)


def train(
    model: Retriever,
    seqs: Sequences,
    codes_table: np.ndarray,
    *,
    config: TrainConfig,
    work_dir: Path,
    out: Path,
    inputs: dict[str, str] | None = None,
    parent: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``seqs`` and write the best-validation checkpoint to ``out``.

    Args:
        model: a freshly initialised (fit) or loaded (finetune) retriever.
        seqs: training windows; ``target`` marks the items that carry loss.
        codes_table: (n_items, D) SID of every item in ``seqs`` (-1 rows never used).
        work_dir: resume state, per-epoch checkpoints and TensorBoard scalars
            (``work_dir/tensorboard``); an existing state resumes.
        out: the final checkpoint artifact.
        on_step: called with the global step after each optimiser step (tests use it
            to interrupt a run).
    """
    cfg = config
    train_seqs, valid_seqs = split_validation(seqs, cfg.valid_fraction, cfg.seed)
    codes = torch.as_tensor(codes_table, dtype=torch.long)
    lengths = (train_seqs.items >= 0).sum(1)
    steps_per_epoch = len(epoch_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=0))
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # The resume state belongs to one (data, config) pair; a different one starts afresh.
    run_id = fingerprint_of([cfg.model_dump(), model.config.model_dump(mode="json"), _data_id(seqs, codes_table), parent])
    state = _load_state(work_dir, run_id)
    if state is None:
        torch.manual_seed(cfg.seed)
        state = {"epoch": 0, "step": 0, "best": math.inf, "best_epoch": -1, "bad": 0, "history": [],
                 "compute": {"retriever_flops": 0.0, "retriever_tokens": 0.0, "retriever_steps": 0.0,
                             "retriever_seconds": 0.0}}
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    flops_token = TRAIN_FLOPS_MULTIPLIER * flops_per_token(model.config, model.config.n_positions)
    bar = progress_bar("train", total=total_steps, enabled=show_progress)
    board = SummaryWriter(str(work_dir / "tensorboard"))
    bar.advance(state["epoch"] * steps_per_epoch + state["step"])
    while state["epoch"] < cfg.epochs and state["bad"] < cfg.patience:
        epoch = state["epoch"]
        batches = epoch_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch)
        model.train()
        while state["step"] < steps_per_epoch:
            started = time.perf_counter()
            batch = _batch(train_seqs, batches[state["step"]], codes, model.config)
            loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            comp = state["compute"]
            # The last token of a sequence is only a target; the model never reads it.
            n_tokens = batch.tokens[:, :-1].numel()
            comp["retriever_tokens"] += float(n_tokens)
            comp["retriever_flops"] += flops_token * n_tokens
            comp["retriever_steps"] += 1
            comp["retriever_seconds"] += time.perf_counter() - started
            tok_s = n_tokens / (time.perf_counter() - started)
            bar.update(loss=float(loss.detach()), epoch=epoch, tok_s=tok_s)
            global_step = epoch * steps_per_epoch + state["step"]
            board.add_scalar("train/loss", float(loss.detach()), global_step)
            board.add_scalar("train/tokens_per_second", tok_s, global_step)
            board.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
            if on_step is not None:
                on_step(global_step)
        valid = _valid_loss(model, valid_seqs, codes, cfg.batch_size) if valid_seqs is not None else float(loss.detach())
        state["history"].append({"epoch": epoch, "train_loss": float(loss.detach()), "valid_loss": valid})
        board.add_scalar("valid/loss", valid, epoch)
        if valid < state["best"] - 1e-4:
            state.update(best=valid, best_epoch=epoch, bad=0, best_model=_cpu_state(model))
        else:
            state["bad"] += 1
        save_file(_cpu_state(model), str(work_dir / f"epoch-{epoch:03d}.safetensors"))
        state.update(epoch=epoch + 1, step=0)
        _save_state(work_dir, run_id, state, model, optimizer, scheduler)
    bar.close()
    board.close()
    if "best_model" in state:
        model.load_state_dict(state["best_model"])
    model.eval()
    compute = dict(state["compute"])
    meta = {**(extra_meta or {}), "history": state["history"], "best_epoch": state["best_epoch"],
            "train": cfg.model_dump(), "train_windows": len(train_seqs)}
    manifest = save_checkpoint(out, model, extra_meta=meta, inputs=inputs, compute=compute, parent=parent, seed=cfg.seed)
    return TrainResult(model=model, manifest=manifest, compute=compute, history=state["history"])


def epoch_batches(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """Row indices of each batch of an epoch: length-bucketed, and a pure function of
    (seed, epoch) so that a resumed run sees exactly the batches it would have seen."""
    return length_batches(lengths, batch_size, np.random.default_rng([seed, epoch]))


def lr_factor(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """Step -> multiple of ``cfg.lr``: linear warm-up, then ``cfg.schedule`` over ``total`` steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _batch(seqs: Sequences, rows: np.ndarray, codes: torch.Tensor, config: RetrieverConfig):
    # Windows are left-padded: drop the columns that are padding for every row.
    width = int((seqs.items[rows] >= 0).sum(1).max())
    items = torch.from_numpy(seqs.items[rows][:, -width:])
    target = seqs.target[rows][:, -width:]
    users = hash_user(seqs.users[rows], config.user_buckets)
    return build_tokens(items, codes, users, config=config, item_weight=torch.from_numpy(target).float())


@torch.no_grad()
def _valid_loss(model: Retriever, seqs: Sequences, codes: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, weight = 0.0, 0.0
    for start in range(0, len(seqs), batch_size):
        rows = np.arange(start, min(start + batch_size, len(seqs)))
        batch = _batch(seqs, rows, codes, model.config)
        w = float(batch.item_weight.sum())
        total += float(model.loss(batch)) * w
        weight += w
    model.train()
    return total / max(weight, 1e-12)


def _cpu_state(model: Retriever) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def _data_id(seqs: Sequences, codes_table: np.ndarray) -> str:
    return fingerprint_of([len(seqs), int(seqs.items.sum()), int(seqs.target.sum()), int(np.asarray(codes_table).sum())])


def _save_state(work_dir: Path, run_id: str, state: dict, model, optimizer, scheduler) -> None:
    """Atomic write of everything a resume needs, and a record of its run id and hash."""
    blob = {**state, "run_id": run_id, "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
    tmp = work_dir / f".{STATE_FILE}.tmp"
    torch.save(blob, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, work_dir / STATE_FILE)
    write_json_atomic(work_dir / STATE_RECORD, {"run_id": run_id, "sha256": digest})


def _load_state(work_dir: Path, run_id: str) -> dict | None:
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
