"""Distillation from the legacy retriever while a refresh fine-tunes it on recoded SIDs.

The checkpoint a refresh starts from (Base) ranks best at the head, where the few gap
epochs of a fine-tune on new codes cannot teach its knowledge again. So the fine-tune's
loss adds, for every target item and semantic level, ``weight`` times the KL divergence
from Base's distribution over the codes of that level, mapped onto the refreshed codes, to
the refreshed model's: Base's mass on a legacy code is spread over the refreshed codes of
the items that carried it (:func:`mass_map`), and the mass Base puts on codes that no item
of both tables carries is left out (the rest renormalised, :func:`mapped_targets`). The
weight falls linearly to 0 over the fine-tune's planned steps, so a fine-tune that runs
them all ends on the data alone (one cut short by early stopping ends with some weight left).

Base reads each window with the legacy SIDs (items the legacy table lacks left out of its
history); a target item the legacy table lacks gets no distillation term. The collision
suffix is not distilled (its numbers mean nothing across tables). Base's forward passes
cost compute that the fine-tune records (``retriever_teacher_flops``, also within
``retriever_flops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from freshsid.data.sequences import Sequences
from freshsid.retriever.model import Retriever, build_tokens, flops_per_token, hash_user
from freshsid.retriever.remap import code_counts, row_shares
from freshsid.sid.table import SidTable


def mass_map(legacy: SidTable, refreshed: SidTable, level: int) -> np.ndarray:
    """(K_legacy, K_refreshed) row-stochastic: row l is how the items both tables code that
    carry legacy code l at ``level`` spread over refreshed codes; all-zero rows for legacy
    codes no such item carries."""
    return row_shares(code_counts(legacy, refreshed, level).T)


def mapped_targets(teacher_probs: torch.Tensor, mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Base's distributions (N, K_legacy) mapped onto refreshed codes (N, K_refreshed), each
    row summing to 1, and (N,) whether a row holds any mapped mass (rows that do not are
    all zero)."""
    mapped = teacher_probs.double() @ mapping.double()
    total = mapped.sum(dim=1)
    ok = total > 0
    return (mapped / torch.where(ok, total, 1.0)[:, None]).to(teacher_probs.dtype), ok


@dataclass
class Teacher:
    """The frozen checkpoint, its table and the maps of its codes onto the table the
    fine-tune speaks; :meth:`term` gives one step's distillation term.

    ``legacy_codes`` (n_items, D): the legacy SID of every item (-1 rows for the items the
    legacy table lacks); ``maps``: one (K_legacy, K_refreshed) tensor per semantic level."""

    model: Retriever
    legacy_codes: np.ndarray
    maps: list[torch.Tensor]
    weight: float

    @classmethod
    def of(cls, model: Retriever, legacy: SidTable, refreshed: SidTable, n_items: int, weight: float) -> Teacher:
        """``model`` (a copy of the checkpoint as loaded, which speaks ``legacy``) as the
        teacher of a fine-tune on ``refreshed``."""
        model.eval().requires_grad_(False)
        maps = [torch.as_tensor(mass_map(legacy, refreshed, level), dtype=torch.float32) for level in range(legacy.n_levels)]
        return cls(model, legacy.lookup_table(n_items), maps, float(weight))

    def key(self) -> list:
        return ["distill", self.weight]

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        self.maps = [m.to(device) for m in self.maps]
        return self

    def forward_flops(self, n_tokens: float) -> float:
        """Base's forward FLOPs over ``n_tokens`` tokens (an upper bound: its histories are
        never longer than the student's)."""
        return flops_per_token(self.model.config, self.model.config.n_positions) * n_tokens

    @torch.no_grad()
    def targets(self, seqs: Sequences, rows: np.ndarray, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
        """For the target items of windows ``rows``, in the order the student's loss keeps
        them (row by row): per semantic level the mapped distribution (N, K_refreshed), and
        (N,) which items have one (the others' rows are zero)."""
        items, target = seqs.items[rows], seqs.target[rows].astype(bool) & (seqs.items[rows] >= 0)
        known = (items >= 0) & (self.legacy_codes[np.maximum(items, 0), 0] >= 0)
        has = torch.as_tensor(known[target], device=device)
        sizes = [m.shape[1] for m in self.maps]
        out = [torch.zeros(len(has), k, device=device) for k in sizes]
        if not bool(has.any()):
            return out, has
        cfg = self.model.config
        width = int(known.sum(1).max())
        shown = np.where(known, items, -1)
        order = np.argsort(~known, axis=1, kind="stable")[:, :width]  # known items packed left, in order
        batch = build_tokens(np.take_along_axis(shown, order, 1), self.legacy_codes, hash_user(seqs.users[rows], cfg.user_buckets),
                             config=cfg, item_weight=np.take_along_axis(target & known, order, 1).astype(np.float32))
        keep = (batch.item_weight.reshape(-1) > 0).nonzero().squeeze(1).to(device)
        hidden = self.model.kept_hidden(batch.tokens.to(device), keep)
        for level, mapping in enumerate(self.maps):
            probs = torch.softmax(self.model.level_logits(hidden[:, level], level).float(), dim=-1)
            mapped, ok = mapped_targets(probs, mapping)
            out[level][has] = mapped * ok[:, None]
        return out, has

    def term(self, seqs: Sequences, rows: np.ndarray, device: torch.device, progress: float):
        """The step's term as :meth:`Retriever.loss_sum` adds it (``soft``), ``progress`` the
        share of the fine-tune's steps done; None once the weight has fallen to 0."""
        scale = self.weight * max(0.0, 1.0 - progress)
        if scale <= 0:
            return None
        targets, has = self.targets(seqs, rows, device)

        def soft(level: int, logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            if level >= len(targets):
                return logits.new_zeros(())
            kl = F.kl_div(F.log_softmax(logits, dim=-1), targets[level], reduction="none").sum(-1)
            return scale * (weight * has * kl).sum()

        return soft
