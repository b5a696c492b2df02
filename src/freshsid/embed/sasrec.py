"""SASRec's network: a causal transformer over item ids, and its training loss.

The state at each position scores the next item by a dot product with the same item
table that feeds the input. Positions count back from the most recent item, so a
history of any length up to ``max_length`` is read right-aligned. The estimator that
trains it is :class:`freshsid.embed.collab.SASRec`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from freshsid.config import SASRecConfig


class Block(nn.Module):
    """Pre-norm causal self-attention + feed-forward, both residual."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.norm1, self.norm2 = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.ffn = nn.Sequential(nn.Linear(config.dim, config.ffn_dim), nn.GELU(), nn.Linear(config.ffn_dim, config.dim))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d); allowed: (B, 1, T, T) bool, True where a query may see a key."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRecModel(nn.Module):
    """Causal transformer over item ids; item ``n_items`` is padding."""

    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.pad = n_items
        self.item = nn.Embedding(n_items + 1, config.dim, padding_idx=n_items)
        self.position = nn.Embedding(config.max_length, config.dim)  # index = distance from the newest item
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.dim)
        nn.init.normal_(self.item.weight, std=config.dim**-0.5)
        nn.init.normal_(self.position.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[n_items].zero_()

    @property
    def item_table(self) -> torch.Tensor:
        """(n_items, d) the shared input/output item embeddings (padding row excluded)."""
        return self.item.weight[: self.pad]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: (B, T) right-aligned item ids, ``pad`` on the left -> (B, T, d) states;
        the state at column j scores the item that follows column j."""
        t = items.shape[1]
        valid = items != self.pad
        distance = torch.arange(t - 1, -1, -1, device=items.device)
        x = self.drop(self.item(items) + self.position(distance)) * valid.unsqueeze(-1)
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
        # A padding query would see no key at all (NaN softmax); let it see itself, its output is unused.
        allowed = (causal & valid.unsqueeze(1)) | torch.eye(t, dtype=torch.bool, device=items.device)
        for block in self.blocks:
            x = block(x, allowed.unsqueeze(1))
        return self.norm(x)


class SummedLoss(nn.Module):
    """The summed training loss of a batch as a module's forward (what DistributedDataParallel wraps).

    Cross-entropy of each target among the candidates; training divides the sum by the
    global batch's target count. Full softmax: every training item. Sampled softmax:
    the target against negatives shared by the batch (uniform, so no logQ correction; a
    negative that is the target is masked out). BCE: the target against one uniform
    negative (SASRec's original loss).
    """

    def __init__(self, model: SASRecModel, config: SASRecConfig) -> None:
        super().__init__()
        self.model, self.kind = model, config.loss

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor,
                negatives: torch.Tensor | None) -> torch.Tensor:
        """inputs (b, W-1) items; mask (b, W-1) target positions; target (n,) column among
        ``candidates``; negatives: (n,) for bce, (m,) for sampled softmax."""
        states = self.model(inputs)[mask].float()  # (n, d)
        table = self.model.item_table.float()
        if self.kind == "softmax":
            return F.cross_entropy(states @ table[candidates].T, target, reduction="sum")
        if self.kind == "bce":
            positive_logit = (states * table[candidates[target]]).sum(-1)
            negative_logit = (states * table[candidates[negatives]]).sum(-1)
            return F.binary_cross_entropy_with_logits(positive_logit, torch.ones_like(positive_logit), reduction="sum") + \
                F.binary_cross_entropy_with_logits(negative_logit, torch.zeros_like(negative_logit), reduction="sum")
        positive = (states * table[candidates[target]]).sum(-1, keepdim=True)
        logits = torch.cat([positive, states @ table[candidates[negatives]].T], dim=1)
        logits[:, 1:] = logits[:, 1:].masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), -torch.inf)
        return F.cross_entropy(logits, torch.zeros_like(target), reduction="sum")
