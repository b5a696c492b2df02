"""Carry a checkpoint's code embeddings onto a refreshed table before it is fine-tuned.

A code's token embedding is both what a history reads and what the head scores (the
two are tied). Alignment relabels refreshed codes to agree with the legacy ones as far
as a one-to-one map allows; an item it cannot keep in place takes a code whose row was
learnt for other items. Remapping rewrites, at each of the first ``levels`` levels,
the row of every refreshed code as the mean of the legacy rows of its items' legacy
codes (each item once, or each by a weight such as its recent events), so the warm start
already scores each new code as the checkpoint scored the items it now stands for. A
code that no item of both tables carries keeps its row; so does the collision suffix
(its numbers mean nothing).

From whole prefixes instead (``basis="prefixes"``): a legacy prefix is read as the sum of
its codes' rows, and level l's row of a refreshed code is the mean, over its items, of the
item's legacy prefix to level l minus the refreshed rows its levels before l already
carry. A code that merged items of different legacy codes takes their mean; at the next
level the remainder of each item's own legacy prefix goes on, so the merged items start
apart again; when every refreshed code holds one item, each item's refreshed prefix sums
to its legacy one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from freshsid.retriever.model import Retriever
from freshsid.sid.table import SidTable


@dataclass(frozen=True)
class RemapPlan:
    """What a fine-tune of a checkpoint on another table of the same shape carries over
    first, and how it starts."""

    spoken: SidTable  # the checkpoint's own table
    levels: int  # semantic levels whose code embeddings are carried
    # "events": each item weighs its events in the fine-tune's window, plus one (see code_mixing)
    weight: Literal["items", "events"] = "items"
    embedding_steps: int = 0  # the fine-tune's first steps train the token embeddings only
    basis: Literal["codes", "prefixes"] = "codes"  # what a row is carried from (module docstring)
    # Further settings of the fine-tune itself: the weight of the distillation from the
    # checkpoint (freshsid.retriever.distill), the share of replayed windows (pipeline.finetune).
    distill: float = 0.0
    replay: float = 0.0

    def key(self) -> list[Any]:
        """The plan's part of a fine-tune's cache key (a plan with the first defaults keys
        as the plain (table, levels) remap always did; the later settings join it only when set)."""
        start = {"weight": self.weight, "embedding_steps": self.embedding_steps}
        later = {name: value for name, value, default in (("basis", self.basis, "codes"), ("distill", self.distill, 0.0),
                                                          ("replay", self.replay, 0.0)) if value != default}
        plain = start == {"weight": "items", "embedding_steps": 0} and not later
        return ["remap", self.spoken.content_hash, self.levels, *([] if plain else [{**start, **later}])]


def extends(table: SidTable, spoken: SidTable) -> bool:
    """``table`` codes every item of ``spoken`` with the same SID (it may code more)."""
    if table.content_hash == spoken.content_hash:
        return True
    return bool(np.isin(spoken.items, table.items).all()) and np.array_equal(table.codes_for(spoken.items), spoken.codes)


def code_counts(legacy: SidTable, refreshed: SidTable, level: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(K_refreshed, K_legacy): entry (c, l) counts the items both tables code that carry
    refreshed code c and legacy code l at ``level``, each once or, given ``weights``
    (indexed by item, positive), by its weight."""
    common, old_rows, new_rows = np.intersect1d(legacy.items, refreshed.items, assume_unique=True, return_indices=True)
    counts = np.zeros((refreshed.codebook_sizes[level], legacy.codebook_sizes[level]))
    mass = 1.0 if weights is None else np.asarray(weights, dtype=np.float64)[common]
    np.add.at(counts, (refreshed.codes[new_rows, level], legacy.codes[old_rows, level]), mass)
    return counts


def row_shares(counts: np.ndarray) -> np.ndarray:
    """``counts`` with each row divided by its sum (all-zero rows stay zero)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts, dtype=np.float64), where=totals > 0)


def code_mixing(legacy: SidTable, refreshed: SidTable, level: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(K, K) row-stochastic: row c is how the items that carry refreshed code c at
    ``level`` spread over legacy codes (items both tables code), each item counting once
    or, given ``weights`` (indexed by item, positive), by its weight; all-zero rows for
    codes no such item carries."""
    return row_shares(code_counts(legacy, refreshed, level, weights))


def remap_code_embeddings(model: Retriever, legacy: SidTable, refreshed: SidTable, levels: int,
                          weights: np.ndarray | None = None, basis: Literal["codes", "prefixes"] = "codes") -> None:
    """Rewrite ``model``'s rows of the first ``levels`` semantic levels in place (see the
    module docstring); ``model`` speaks ``legacy``'s codes and will be fine-tuned on
    ``refreshed``'s, of the same shape. ``weights``: see :func:`code_mixing`; ``basis``:
    carry each level from the items' legacy codes at that level, or from their prefixes."""
    if legacy.codebook_sizes != refreshed.codebook_sizes or tuple(model.config.codebook_sizes) != refreshed.codebook_sizes:
        raise ValueError("the model and both tables must share one SID shape")
    if not 0 <= levels <= refreshed.n_levels:
        raise ValueError(f"levels must be within 0..{refreshed.n_levels}")
    if weights is not None and not (np.asarray(weights) > 0).all():
        raise ValueError("remap weights must be positive")
    if basis == "prefixes":
        _remap_prefixes(model, legacy, refreshed, levels, weights)
        return
    weight = model.tok_emb.weight
    with torch.no_grad():
        for level in range(levels):
            mixing = code_mixing(legacy, refreshed, level, weights)
            carried = np.flatnonzero(mixing.sum(axis=1) > 0)
            start = model.config.level_offsets[level]
            rows = weight[start : start + refreshed.codebook_sizes[level]]
            rows[torch.as_tensor(carried)] = torch.as_tensor(mixing[carried], dtype=rows.dtype) @ rows


def _remap_prefixes(model: Retriever, legacy: SidTable, refreshed: SidTable, levels: int,
                    weights: np.ndarray | None) -> None:
    """The ``basis="prefixes"`` remap (module docstring), level after level: each level's
    rows are the weighted mean, per refreshed code, of its items' legacy prefix sums less
    the rows of their refreshed codes at the levels before it (already rewritten)."""
    common, old_rows, new_rows = np.intersect1d(legacy.items, refreshed.items, assume_unique=True, return_indices=True)
    mass = torch.as_tensor(np.ones(len(common)) if weights is None else np.asarray(weights, np.float64)[common])
    offsets = torch.as_tensor(model.config.level_offsets)
    weight = model.tok_emb.weight
    with torch.no_grad():
        old = torch.as_tensor(legacy.codes[old_rows].astype(np.int64)) + offsets  # tokens
        new = torch.as_tensor(refreshed.codes[new_rows].astype(np.int64)) + offsets
        rest = torch.zeros(len(common), weight.shape[1], dtype=torch.float64)  # legacy prefix - refreshed prefix
        for level in range(levels):
            rest += weight[old[:, level]].double()
            tokens, codes = torch.unique(new[:, level], return_inverse=True)
            sums = torch.zeros(len(tokens), weight.shape[1], dtype=torch.float64).index_add_(0, codes, mass[:, None] * rest)
            totals = torch.zeros(len(tokens), dtype=torch.float64).index_add_(0, codes, mass)
            weight[tokens] = (sums / totals[:, None]).to(weight.dtype)
            rest -= weight[new[:, level]].double()
