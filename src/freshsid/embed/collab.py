"""Collaborative item embeddings from a SASRec-style sequential recommender.

SASRec (Kang & McAuley, ICDM 2018): a causal transformer reads a user's items and,
at every position, scores the next item by a dot product with the same item table
that feeds its input. That table is what SID tokenizers quantize: items that follow
the same histories end up close. The fitted model is also the dense retrieval
baseline (:meth:`SASRec.recommend`).

Departures from the paper, each for a reason:

- Loss: cross-entropy (a sampled softmax with shared uniform negatives, or the full
  softmax over all training items) instead of BCE with one negative; cross-entropy
  trains SASRec markedly better (Klenitskiy & Vasilev, RecSys 2023).
- Positions count back from the most recent item, so a history of any length up to
  ``max_length`` is read right-aligned, and a batch can drop its leading all-padding
  columns (most Amazon users have under ten items, windows hold fifty).
- Only items seen in training are scored while training, so an item never seen gets
  no gradient and keeps its initial row; ``trained_items_`` flags the others.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from freshsid.artifacts import state_fingerprint
from freshsid.config import SASRecConfig
from freshsid.data.interactions import Interactions
from freshsid.data.sequences import Sequences, length_batches, windows
from freshsid.data.temporal import Examples, last_items
from freshsid.embed.sasrec import SASRecModel, SummedLoss
from freshsid.embed.store import Embeddings
from freshsid.errors import FreshsidError
from freshsid.metrics import recall_ndcg
from freshsid.progress import progress_bar
from freshsid.runtime import current

LOG_EVERY = 20  # steps between reads of the loss (each read waits for the device)
ITEM_TABLE = "item.weight"  # (n_items + 1, dim) in the state: the item table, the padding row last


class SASRec:
    """Fit a SASRec-style model on a window of events; expose its item table.

    Fitted attributes:
        model_: the trained :class:`SASRecModel` (best validation epoch).
        item_embeddings_: (n_items, dim) float32 item table; rows of untrained items keep their init.
        trained_items_: (n_items,) bool, True for items that appear in the training sequences.
        history_: per-epoch ``{"epoch", "loss", "valid"}``; best_epoch_, epochs_run_.
        fit_seconds_: wall time of fit; flops_: analytic training FLOPs (forward + backward).
    """

    def __init__(
        self,
        config: SASRecConfig | None = None,
        *,
        random_state: int = 0,
        progress: bool = True,
        init_state: Mapping[str, np.ndarray] | None = None,
        fold_in: np.ndarray | None = None,
    ) -> None:
        self.config = config if config is not None else SASRecConfig()
        self.random_state = random_state
        self.progress = progress
        # Warm start: the weights (:meth:`state`) of a SASRec fitted on the same logs, or on
        # logs these extend, with the same config, e.g. the legacy model, so that a refresh
        # continues from it and moves item embeddings where behaviour moved instead of
        # learning a new space.
        self.init_state = init_state
        # Fold-in: only these items' rows train; every other weight keeps its init_state value,
        # so new items are placed in the space of the model they are folded into.
        if fold_in is not None and init_state is None:
            raise ValueError("folding items in needs the weights to fold them into (init_state)")
        self.fold_in = None if fold_in is None else np.unique(np.asarray(fold_in, dtype=np.int64))

    def get_params(self) -> dict:
        return {"config": self.config.model_dump(), "random_state": self.random_state,
                "init_state": state_fingerprint(self.init_state),
                "fold_in": None if self.fold_in is None else len(self.fold_in)}

    def state(self) -> dict[str, np.ndarray]:
        """The fitted model's weights as numpy arrays (what ``init_state`` takes)."""
        if not hasattr(self, "model_"):
            raise FreshsidError("This SASRec is not fitted yet; call fit() before state().")
        return {name: t.detach().numpy().copy() for name, t in self.model_.state_dict().items()}

    def fit(self, logs: Interactions, events: slice, *, valid: Examples | None = None) -> SASRec:
        """Train on ``logs`` events ``events`` (a slice of the time-sorted arrays).

        ``valid``: examples for early stopping, drawn from the training window only. When
        None, the last event of ``config.valid_users`` sampled users is held out of the
        training events for that purpose (no early stopping when ``valid_users`` is 0).
        """
        cfg = self.config
        start = time.perf_counter()
        rng = np.random.default_rng(self.random_state)
        user, item = logs.user[events], logs.item[events]
        if valid is None and cfg.valid_users > 0:
            keep, valid = holdout_last(user, item, n_users=cfg.valid_users, length=cfg.max_length, rng=rng)
            user, item = user[keep], item[keep]
        if cfg.sequences == "last":  # one training sequence per user: its last max_length + 1 items
            keep = last_events(user, cfg.max_length + 1)
            user, item = user[keep], item[keep]
        seqs = windows(user, item, length=cfg.max_length + 1)
        if len(seqs) == 0:
            raise FreshsidError(
                f"Events {events.start}:{events.stop} of {logs.name} hold no user with two items; widen the training window."
            )
        self.n_items_ = logs.n_items
        self.trained_items_ = np.zeros(logs.n_items, dtype=bool)
        self.trained_items_[seqs.items[seqs.items >= 0]] = True
        candidates = np.flatnonzero(self.trained_items_)
        slot = np.full(logs.n_items + 1, -1, dtype=np.int64)  # item -> column among candidates
        slot[candidates] = np.arange(len(candidates))

        rt = current()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.model_ = SASRecModel(logs.n_items, cfg)
            if self.init_state is not None:
                self._warm_start(self.init_state)
            if rt.distributed:
                torch.manual_seed(self.random_state + rt.rank)  # each rank its own dropout
            self._train(seqs, torch.from_numpy(candidates), slot, valid, rng)
        self.model_.cpu()
        self.item_embeddings_ = self.model_.item_table.detach().numpy().astype(np.float32, copy=True)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    @classmethod
    def restore(cls, embeddings: Embeddings, n_items: int) -> SASRec:
        """The fitted model behind a saved collaborative :class:`Embeddings` (its config and
        weights ride along), ready to :meth:`recommend`."""
        if embeddings.state is None:
            raise FreshsidError("These embeddings carry no SASRec weights (an older build saved none); rebuild them "
                                "with this version of freshsid.")
        model = cls(SASRecConfig.model_validate(embeddings.config), random_state=embeddings.seed or 0, progress=False)
        model.model_ = SASRecModel(n_items, model.config)
        model._warm_start(embeddings.state)
        model.n_items_ = n_items
        model.trained_items_ = np.zeros(n_items, dtype=bool)
        model.trained_items_[embeddings.items] = True
        return model

    def _warm_start(self, init: Mapping[str, np.ndarray]) -> None:
        own = self.model_.state_dict()
        init = {k: np.asarray(v, dtype=np.float32) for k, v in init.items()}
        fitted = init.get(ITEM_TABLE)
        if fitted is not None and fitted.ndim == 2 and fitted.shape[1:] == own[ITEM_TABLE].shape[1:] \
                and len(fitted) < len(own[ITEM_TABLE]):
            # Logs appended to since the weights were fitted: dense items keep their index and
            # the new ones come after, so the fitted rows carry over and the new items (and
            # the padding row, last) keep their initial rows.
            rows = own[ITEM_TABLE].numpy().copy()
            rows[: len(fitted) - 1] = fitted[:-1]
            init[ITEM_TABLE] = rows
        shapes = {k: tuple(v.shape) for k, v in own.items()}
        given = {k: v.shape for k, v in init.items()}
        if given != shapes:
            raise FreshsidError(
                "The warm-start weights do not fit this SASRec (other logs, dimension or depth); "
                "warm-start from a model fitted on these logs, or on logs they extend, with the same config."
            )
        self.model_.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})

    def _train(
        self, seqs: Sequences, candidates: torch.Tensor, slot: np.ndarray, valid: Examples | None, rng: np.random.Generator
    ) -> None:
        """Epochs of length-bucketed batches until early stopping. Under torchrun each rank
        takes its share of every batch's rows and DistributedDataParallel sums the
        gradients; random draws (batches, negatives) are made for the whole batch on
        every rank alike, so the ranks together take the one-process step."""
        cfg, model, rt = self.config, self.model_, current()
        model.to(rt.device)
        # Plain Adam, no weight decay: a row with no gradient then never moves, so untrained items keep their init.
        optimizer = torch.optim.Adam(self._trainable(model), lr=cfg.learning_rate)
        net: nn.Module = SummedLoss(model, cfg)
        if rt.distributed:
            net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.on_gpu else None)
        items = torch.from_numpy(np.where(seqs.items >= 0, seqs.items, model.pad))
        target = torch.from_numpy(seqs.target)
        lengths = (seqs.items >= 0).sum(axis=1)
        n_batches = -(-len(seqs) // cfg.batch_size)
        candidates = candidates.to(rt.device)
        self.history_, self.flops_, self.best_epoch_ = [], 0.0, 0
        best, best_state, stale = -math.inf, None, 0
        with progress_bar("SASRec", total=cfg.max_epochs * n_batches, enabled=self.progress and rt.is_main) as bar:
            valid_text = ""
            for epoch in range(1, cfg.max_epochs + 1):
                model.train()
                total, steps = torch.zeros((), device=rt.device), 0
                for rows in length_batches(lengths, cfg.batch_size, rng):
                    width = int(lengths[rows].max())  # trailing columns that hold any item
                    block, mask = items[rows, -width:], target[rows, -width + 1 :]
                    total += self._step(net, block, mask, candidates, slot, optimizer, rng)
                    steps += 1
                    if steps % LOG_EVERY == 0:  # reading the loss waits for the device
                        bar.update(advance=0, epoch=epoch, loss=float(rt.sum(total)) / steps, valid=valid_text)
                    bar.advance()
                record = {"epoch": epoch, "loss": float(rt.sum(total)) / max(steps, 1), "valid": None}
                bar.update(advance=0, epoch=epoch, loss=record["loss"], valid=valid_text)
                self.history_.append(record)
                self.epochs_run_ = epoch
                if valid is None or len(valid) == 0:
                    self.best_epoch_ = epoch
                    continue
                # Every rank holds the same weights, so every rank reaches the same score.
                record["valid"] = score = self._validate(valid, candidates.cpu().numpy())
                valid_text = f"{cfg.valid_metric} {score:.4f}"
                if score > best:
                    best, best_state, stale, self.best_epoch_ = score, copy.deepcopy(model.state_dict()), 0, epoch
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()

    def _trainable(self, model: SASRecModel) -> list[nn.Parameter]:
        """Every weight, or under fold-in the item table alone with every row but the
        folded-in items' masked out of its gradient (Adam then never moves them)."""
        if self.fold_in is None:
            return list(model.parameters())
        for param in model.parameters():
            param.requires_grad_(False)
        table = model.item.weight
        table.requires_grad_(True)
        rows = torch.zeros(len(table), 1, device=table.device)
        rows[torch.from_numpy(self.fold_in)] = 1.0
        table.register_hook(lambda grad: grad * rows)
        return [table]

    def _step(
        self,
        net: nn.Module,
        block: torch.Tensor,
        mask: torch.Tensor,
        candidates: torch.Tensor,
        slot: np.ndarray,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """One update on a global batch; returns this rank's part of the loss (on the device).

        block: (B, W) item ids (padding on the left); column j + 1 is the next item after
        column j; mask: (B, W - 1) True where predicting column j + 1 carries loss.
        """
        cfg, rt = self.config, current()
        target = slot[block[:, 1:][mask].numpy()]  # (n,) every target of the batch, row by row
        n_targets = len(target)
        negatives = self._negatives(rng, n_targets, len(candidates))
        mine = rt.share(np.arange(len(block)))
        scale = rt.world_size / max(n_targets, 1) if len(mine) else 0.0  # a rank without rows adds 0
        mine = mine if len(mine) else np.arange(1)
        of_mine = np.isin(mask.nonzero()[:, 0].numpy(), mine)  # which of the batch's targets are this rank's
        if cfg.loss == "bce":
            negatives = negatives[of_mine]
        with rt.autocast():
            loss = net(rt.to_device(block[mine][:, :-1]), rt.to_device(mask[mine]), rt.to_device(torch.from_numpy(target[of_mine])),
                       candidates, None if negatives is None else rt.to_device(torch.from_numpy(negatives))) * scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n_scored = {"softmax": len(candidates), "bce": 2}.get(cfg.loss, cfg.n_negatives + 1)
        self.flops_ += _train_flops(cfg, batch=len(block), width=block.shape[1] - 1, n_targets=n_targets, n_scored=n_scored)
        return loss.detach() / rt.world_size

    def _negatives(self, rng: np.random.Generator, n_targets: int, n_candidates: int) -> np.ndarray | None:
        """Columns of the negative candidates: one per target (bce), a set shared by the
        batch (sampled softmax) or none (full softmax)."""
        if self.config.loss == "bce":
            return rng.integers(0, n_candidates, size=n_targets)
        if self.config.loss == "sampled_softmax":
            return rng.integers(0, n_candidates, size=self.config.n_negatives)
        return None

    def _validate(self, valid: Examples, candidates: np.ndarray) -> float:
        k = int(self.config.valid_metric.split("@")[1])
        ranked = self.recommend(valid.inputs, k=k, allowed_items=candidates)
        return recall_ndcg(ranked, valid.label_indptr, valid.label_items, ks=(k,))[self.config.valid_metric]

    @torch.no_grad()
    def recommend(
        self, inputs: np.ndarray, k: int, *, allowed_items: np.ndarray | None = None, batch_size: int = 1024
    ) -> np.ndarray:
        """Top-k next items for each history.

        Args:
            inputs: (m, L) item index, left-padded with -1; only the last ``max_length`` columns are read.
            k: list length.
            allowed_items: item indices that may be recommended (default: the trained items).
        Returns:
            (m, k) int64 item index, best first; -1 where fewer than k items are allowed.
        """
        if not hasattr(self, "model_"):
            raise FreshsidError("This SASRec is not fitted yet; call fit() before recommend().")
        inputs = np.asarray(inputs, dtype=np.int64)
        if inputs.ndim != 2 or inputs.size and (inputs.min() < -1 or inputs.max() >= self.n_items_):
            raise FreshsidError(
                f"Histories must be a 2-D array of item indices in [-1, {self.n_items_}); got shape {inputs.shape}."
            )
        if allowed_items is None:
            allowed = np.flatnonzero(self.trained_items_)
        else:
            allowed = np.unique(np.asarray(allowed_items, dtype=np.int64))
        if allowed.size and (allowed[0] < 0 or allowed[-1] >= self.n_items_):
            raise FreshsidError(f"Allowed items must be item indices in [0, {self.n_items_}).")
        model = self.model_.eval()
        device = model.item_table.device
        inputs = inputs[:, -self.config.max_length :]
        table = model.item_table[torch.from_numpy(allowed).to(device)]  # (a, d)
        out = np.full((len(inputs), k), -1, dtype=np.int64)
        top = min(k, len(allowed))
        for lo in range(0, len(inputs), batch_size):
            chunk = inputs[lo : lo + batch_size]
            width = max(1, int((chunk >= 0).sum(axis=1).max(initial=0)))
            x = torch.from_numpy(np.where(chunk >= 0, chunk, model.pad)[:, -width:]).to(device)
            scores = model(x)[:, -1].float() @ table.T.float()  # (b, a)
            out[lo : lo + len(chunk), :top] = allowed[scores.topk(top, dim=1).indices.cpu().numpy()]
        return out


def last_events(user: np.ndarray, n: int) -> np.ndarray:
    """(len(user),) bool: True on each user's last ``n`` events (``user`` in time order)."""
    order = np.argsort(user, kind="stable")
    sorted_users = user[order]
    ends = np.searchsorted(sorted_users, sorted_users, side="right")
    keep = np.zeros(len(user), dtype=bool)
    keep[order] = ends - np.arange(len(user)) <= n
    return keep


def holdout_last(
    user: np.ndarray, item: np.ndarray, *, n_users: int, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, Examples]:
    """Hold out the last event of up to ``n_users`` sampled users (those with 3+ events, so
    that two stay for training) as validation examples.

    Args:
        user, item: (n,) training events in time order.
    Returns:
        keep: (n,) bool, False on held-out events; examples: inputs = the last ``length``
        kept items of each chosen user, label = the held-out item.
    """
    order = np.argsort(user, kind="stable")
    users, starts, counts = np.unique(user[order], return_index=True, return_counts=True)
    eligible = np.flatnonzero(counts >= 3)
    chosen = np.sort(rng.choice(eligible, size=min(n_users, len(eligible)), replace=False))
    held = order[starts[chosen] + counts[chosen] - 1]  # event position of each chosen user's last event
    keep = np.ones(len(user), dtype=bool)
    keep[held] = False
    inputs = last_items(user[keep], item[keep], users[chosen], length)
    indptr = np.arange(len(chosen) + 1, dtype=np.int64)
    return keep, Examples(users[chosen], inputs, indptr, item[held].astype(np.int64))


def _train_flops(config: SASRecConfig, *, batch: int, width: int, n_targets: int, n_scored: int) -> float:
    """Analytic FLOPs of one training step (forward + backward = 3x forward, since the
    backward pass does two matmuls per forward one). Per input position and layer: qkv and
    output projections, attention scores and mixing over ``width`` keys, the FFN; then one
    dot product per scored item per target position."""
    d = config.dim
    per_position = config.n_layers * (2 * d * 3 * d + 2 * d * d + 2 * 2 * d * width + 2 * 2 * d * config.ffn_dim)
    return 3.0 * (batch * width * per_position + n_targets * n_scored * 2 * d)


def collab_embeddings(
    logs: Interactions,
    events: slice,
    *,
    window: str,
    config: SASRecConfig,
    seed: int,
    progress: bool = True,
    init_state: Mapping[str, np.ndarray] | None = None,
    fold_in: np.ndarray | None = None,
) -> tuple[Embeddings, SASRec]:
    """Fit SASRec on ``events`` (optionally continuing from ``init_state``, or training only
    the ``fold_in`` items' rows of it) and return its item table as :class:`Embeddings`
    (rows of items it trained on are the covered ones, the model's weights ride along),
    with the fitted model."""
    model = SASRec(config, random_state=seed, progress=progress, init_state=init_state, fold_in=fold_in)
    model.fit(logs, events)
    emb = Embeddings(model.item_embeddings_, np.flatnonzero(model.trained_items_), "collab", config.model_dump(),
                     seed, {"seconds": model.fit_seconds_, "flops": model.flops_, "best_epoch": model.best_epoch_,
                            "epochs_run": model.epochs_run_}, window, state=model.state())
    return emb, model
