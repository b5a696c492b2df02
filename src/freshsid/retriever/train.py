"""Training the retriever: ``fit`` from scratch and ``finetune`` from a checkpoint.

One loop serves both. Teacher-forced next-SID loss over every item position of
each user window (``freshsid.data.sequences.windows``); fine-tuning restricts the
loss to chosen target events. AdamW with linear warm-up and cosine decay, early
stopping on a validation slice of users carved from the training data, a
checkpoint per epoch and a resume state that makes a killed run finish with
the same weights as an uninterrupted one: model, optimiser, scheduler, every
rank's torch RNG and the data position (epoch, step) are saved, and each epoch's
shuffle is a pure function of (seed, epoch). Under torchrun the same loop runs on
every rank with DistributedDataParallel (see :func:`train`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from freshsid.artifacts import Manifest, fingerprint_of, read_manifest
from freshsid.config import TrainConfig
from freshsid.data.sequences import Sequences, length_batches
from freshsid.progress import progress_bar
from freshsid.retriever.distill import Teacher
from freshsid.retriever.resume import cpu_state, load_state, rng_state, save_state, set_rng
from freshsid.runtime import Runtime, current
from freshsid.retriever.model import (
    CHECKPOINT_KIND,
    TRAIN_FLOPS_MULTIPLIER,
    Retriever,
    RetrieverConfig,
    build_tokens,
    flops_per_token,
    hash_user,
    save_checkpoint,
)

LOG_EVERY = 20  # steps between reads of the loss (each read waits for the device)


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
    embedding_steps: int = 0,
    teacher: Teacher | None = None,
    spent: dict[str, float] | None = None,
) -> TrainResult:
    """Train ``model`` on ``seqs`` and write the best-validation checkpoint to ``out``.

    Runs on :func:`freshsid.runtime.current`'s device. Under torchrun every rank calls it
    with the same arguments: each global batch (``config.batch_size`` windows) is split
    across the ranks, DistributedDataParallel all-reduces the gradients and each rank's
    loss is divided by the *global* batch's weight, so the update is the one-process
    update; rank 0 writes the checkpoints and the resume state.

    Args:
        model: a freshly initialised (fit) or loaded (finetune) retriever.
        seqs: training windows; ``target`` marks the items that carry loss.
        codes_table: (n_items, D) SID of every item in ``seqs`` (-1 rows never used).
        work_dir: resume state, per-epoch checkpoints and TensorBoard scalars
            (``work_dir/tensorboard``); an existing state resumes.
        out: the final checkpoint artifact.
        on_step: called with the global step after each optimiser step (tests use it
            to interrupt a run).
        embedding_steps: the first this many optimiser steps (of the same schedule) update
            the token embeddings only; every other weight keeps its value until then.
        teacher: a frozen model whose mapped code distributions the loss also pulls
            towards (:mod:`freshsid.retriever.distill`), its weight annealed over the
            ``epochs`` x steps of the schedule.
        spent: compute this model already cost before this run (a fit before its recency
            pass, :func:`freshsid.retriever.pipeline.fit`), added to the record's.
    """
    cfg, rt = config, current()
    train_seqs, valid_seqs = split_validation(seqs, cfg.valid_fraction, cfg.seed)
    codes = torch.as_tensor(codes_table, dtype=torch.long)
    lengths = (train_seqs.items >= 0).sum(1)
    steps_per_epoch = len(epoch_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=0))
    total_steps = steps_per_epoch * cfg.epochs
    model.to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # The resume state belongs to one (data, config, number of ranks); another starts afresh.
    run_id = fingerprint_of([cfg.model_dump(), model.config.model_dump(mode="json"), _data_id(seqs, codes_table), parent]
                            + ([rt.world_size] if rt.distributed else [])
                            + ([["embedding_steps", embedding_steps]] if embedding_steps else [])
                            + ([teacher.key()] if teacher is not None else []))
    state = _start_or_resume(work_dir, run_id, model, optimizer, scheduler, cfg.seed, rt)
    net: torch.nn.Module = _SummedLoss(model, cfg.label_smoothing)
    if rt.distributed:
        net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.on_gpu else None)
    loop = _Loop(model, net, optimizer, scheduler, train_seqs, codes, cfg, rt, embedding_steps=embedding_steps,
                 steps_per_epoch=steps_per_epoch, state=state, on_step=on_step,
                 teacher=teacher.to(rt.device) if teacher is not None else None)
    bar = progress_bar("train", total=total_steps, enabled=show_progress and rt.is_main)
    board = SummaryWriter(str(work_dir / "tensorboard")) if rt.is_main else None
    bar.advance(state["epoch"] * steps_per_epoch + state["step"])
    while state["epoch"] < cfg.epochs and state["bad"] < cfg.patience:
        epoch = state["epoch"]
        train_loss = loop.epoch(bar, board)
        valid = _valid_loss(model, valid_seqs, codes, cfg.batch_size, rt) if valid_seqs is not None else train_loss
        state["history"].append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid})
        if board is not None:
            board.add_scalar("valid/loss", valid, epoch)
        if valid < state["best"] - 1e-4:
            state.update(best=valid, best_epoch=epoch, bad=0, best_model=cpu_state(model))
        else:
            state["bad"] += 1
        state.update(epoch=epoch + 1, step=0)
        rng = rt.gather(rng_state(rt))  # every rank's, so that each resumes its own dropout stream
        if rt.is_main:
            save_file(cpu_state(model), str(work_dir / f"epoch-{epoch:03d}.safetensors"))
            save_state(work_dir, run_id, state, model, optimizer, scheduler, rng)
        rt.barrier()
    bar.close()
    if board is not None:
        board.close()
    if "best_model" in state:
        model.load_state_dict(state["best_model"])
    model.eval()
    compute = {name: value + (spent or {}).get(name, 0.0) for name, value in state["compute"].items()}
    meta = {**(extra_meta or {}), "history": state["history"], "best_epoch": state["best_epoch"],
            "steps_per_epoch": steps_per_epoch,
            "train": cfg.model_dump(), "train_windows": len(train_seqs), "processes": rt.world_size,
            "device": rt.device.type, **({"embedding_steps": embedding_steps} if embedding_steps else {}),
            **({"distill": teacher.weight} if teacher is not None else {})}
    if rt.is_main:
        manifest = save_checkpoint(out, model, extra_meta=meta, inputs=inputs, compute=compute, parent=parent, seed=cfg.seed)
    rt.barrier()
    if not rt.is_main:
        manifest = read_manifest(Path(out), CHECKPOINT_KIND)
    return TrainResult(model=model, manifest=manifest, compute=compute, history=state["history"])


def _start_or_resume(work_dir: Path, run_id: str, model: Retriever, optimizer, scheduler, seed: int,
                     rt: Runtime) -> dict[str, Any]:
    """The training state: the resume state of run ``run_id`` loaded into the model, the
    optimiser, the scheduler and the random generators; or a fresh one."""
    state = load_state(work_dir, run_id)
    if state is None:
        torch.manual_seed(seed + rt.rank)  # dropout differs between ranks, as between rows
        return {"epoch": 0, "step": 0, "best": math.inf, "best_epoch": -1, "bad": 0, "history": [],
                "compute": {"retriever_flops": 0.0, "retriever_tokens": 0.0, "retriever_steps": 0.0,
                            "retriever_seconds": 0.0}}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng(state["rng"], rt)
    return state


class _Loop:
    """The optimiser steps of one epoch after another, and their accounting: tokens, FLOPs,
    steps and seconds in ``state["compute"]``, the loss read at the logging cadence only."""

    def __init__(self, model: Retriever, net: torch.nn.Module, optimizer, scheduler, seqs: Sequences,
                 codes: torch.Tensor, cfg: TrainConfig, rt: Runtime, *, embedding_steps: int, steps_per_epoch: int,
                 state: dict[str, Any], on_step: Callable[[int], None] | None, teacher: Teacher | None = None) -> None:
        self.model, self.net, self.optimizer, self.scheduler = model, net, optimizer, scheduler
        self.teacher = teacher
        self.seqs, self.codes, self.cfg, self.rt, self.state, self.on_step = seqs, codes, cfg, rt, state, on_step
        self.lengths = (seqs.items >= 0).sum(1)
        self.weights = np.where(seqs.items >= 0, seqs.target, 0).sum(1).astype(np.float64)  # loss weight per window
        self.steps_per_epoch, self.embedding_steps = steps_per_epoch, embedding_steps
        self.waiting = [p for name, p in model.named_parameters() if not name.startswith("tok_emb.")] \
            if embedding_steps else []
        self.flops_token = TRAIN_FLOPS_MULTIPLIER * flops_per_token(model.config, model.config.n_positions)

    def epoch(self, bar, board) -> float:
        """The rest of the current epoch's steps; returns its mean training loss."""
        state, rt, cfg = self.state, self.rt, self.cfg
        epoch = state["epoch"]
        batches = epoch_batches(self.lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch)
        self.model.train()
        # Losses stay on the device and are read at the logging cadence only (no per-step sync).
        epoch_loss, recent = torch.zeros((), device=rt.device), torch.zeros((), device=rt.device)
        epoch_steps, started = 0, time.perf_counter()
        while state["step"] < self.steps_per_epoch:
            rows = batches[state["step"]]
            loss = self.step(rows, epoch * self.steps_per_epoch + state["step"])
            state["step"] += 1
            epoch_steps += 1
            epoch_loss += loss
            recent += loss
            self.count(rows)
            global_step = epoch * self.steps_per_epoch + state["step"]
            if state["step"] % LOG_EVERY == 0 or state["step"] == self.steps_per_epoch:
                shown = float(rt.sum(recent)) / rt.world_size / (state["step"] % LOG_EVERY or LOG_EVERY)
                recent.zero_()
                now = time.perf_counter()
                comp = state["compute"]
                comp["retriever_seconds"] += now - started
                tok_s = comp["retriever_tokens"] / max(comp["retriever_seconds"], 1e-9)
                started = now
                bar.update(advance=0, loss=shown, epoch=epoch, tok_s=tok_s)
                if board is not None:
                    board.add_scalar("train/loss", shown, global_step)
                    board.add_scalar("train/tokens_per_second", tok_s, global_step)
                    board.add_scalar("train/lr", self.scheduler.get_last_lr()[0], global_step)
            bar.advance()
            if self.on_step is not None:
                self.on_step(global_step)
        # Each rank's loss is scaled by world_size (DDP averages gradients): undo it to report.
        return float(rt.sum(epoch_loss)) / rt.world_size / max(epoch_steps, 1)

    def step(self, rows: np.ndarray, done: int) -> torch.Tensor:
        """One optimiser step on the global batch ``rows`` (``done`` steps before it); this
        rank's share of the loss, detached, on the device."""
        rt, model = self.rt, self.model
        mine = rt.share(rows)
        # A rank with no row of a short last batch still joins the all-reduce, with weight 0.
        scale = rt.world_size / max(self.weights[rows].sum() * model.config.n_levels, 1e-12) if len(mine) else 0.0
        tokens, weight, keep = _device_batch(self.seqs, mine if len(mine) else rows[:1], self.codes, model.config, rt)
        soft = None if self.teacher is None else self.teacher.term(
            self.seqs, mine if len(mine) else rows[:1], rt.device, done / (self.steps_per_epoch * self.cfg.epochs))
        with rt.autocast():
            loss = self.net(tokens, weight, keep, soft) * scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if done < self.embedding_steps:
            for param in self.waiting:  # AdamW leaves a weight without a gradient as it is (no decay)
                param.grad = None
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def count(self, rows: np.ndarray) -> None:
        """A step's tokens and FLOPs: every rank's (a window's last token is only a target)."""
        comp, rt = self.state["compute"], self.rt
        n_tokens = sum(len(part) * int(self.lengths[part].max()) for part in rt.shares(rows) if len(part)) \
            * self.model.config.n_levels
        comp["retriever_tokens"] += float(n_tokens)
        comp["retriever_flops"] += self.flops_token * n_tokens
        if self.teacher is not None:  # its forward passes, within the fine-tune's FLOPs and apart
            teacher = self.teacher.forward_flops(n_tokens)
            comp["retriever_flops"] += teacher
            comp["retriever_teacher_flops"] = comp.get("retriever_teacher_flops", 0.0) + teacher
        comp["retriever_steps"] += 1


class _SummedLoss(torch.nn.Module):
    """The retriever's summed loss as a module's forward, which is what DistributedDataParallel wraps."""

    def __init__(self, model: Retriever, smoothing: float = 0.0) -> None:
        super().__init__()
        self.model, self.smoothing = model, smoothing

    def forward(self, tokens: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, soft=None) -> torch.Tensor:
        return self.model.loss_sum(tokens, weight, keep, soft, self.smoothing)


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


def _device_batch(seqs: Sequences, rows: np.ndarray, codes: torch.Tensor, config: RetrieverConfig, rt: Runtime):
    """Tokens, loss weights and the flat indices of the weighted items, built on the host
    and moved to the runtime's device."""
    batch = _batch(seqs, rows, codes, config)
    keep = (batch.item_weight.reshape(-1) > 0).nonzero().squeeze(1)
    return rt.to_device(batch.tokens), rt.to_device(batch.item_weight), rt.to_device(keep)


def _batch(seqs: Sequences, rows: np.ndarray, codes: torch.Tensor, config: RetrieverConfig):
    # Windows are left-padded: drop the columns that are padding for every row.
    width = int((seqs.items[rows] >= 0).sum(1).max())
    items = torch.from_numpy(seqs.items[rows][:, -width:])
    target = seqs.target[rows][:, -width:]
    users = hash_user(seqs.users[rows], config.user_buckets)
    return build_tokens(items, codes, users, config=config, item_weight=torch.from_numpy(target).float())


@torch.no_grad()
def held_out_loss(model: Retriever, seqs: Sequences, codes_table: np.ndarray, batch_size: int) -> float:
    """The mean loss of ``model`` over the targets of ``seqs`` (what early stopping reads)."""
    model.to(current().device)
    return _valid_loss(model, seqs, torch.as_tensor(codes_table, dtype=torch.long), batch_size, current())


def _valid_loss(model: Retriever, seqs: Sequences, codes: torch.Tensor, batch_size: int, rt: Runtime) -> float:
    """Mean loss over the validation windows; ranks take turns over its batches."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)  # weighted loss, weight
    for start in range(rt.rank * batch_size, len(seqs), batch_size * rt.world_size):
        rows = np.arange(start, min(start + batch_size, len(seqs)))
        tokens, weight, keep = _device_batch(seqs, rows, codes, model.config, rt)
        with rt.autocast():
            sums[0] += model.loss_sum(tokens, weight, keep).double()
        sums[1] += weight.sum().double() * model.config.n_levels
    total, weight = rt.sum(sums).tolist()
    model.train()
    return total / max(weight, 1e-12)


def _data_id(seqs: Sequences, codes_table: np.ndarray) -> str:
    return fingerprint_of([len(seqs), int(seqs.items.sum()), int(seqs.target.sum()), int(np.asarray(codes_table).sum())])
