"""The generative retriever: a small GPT-style decoder over SID tokens.

Read top to bottom: config, token layout, attention, block, model, FLOPs, checkpoints.
It is over 500 lines for one reason: the network has two forward paths that must agree,
the teacher-forced one training uses and the cached one-token step the beam search runs
(with its cache layout), and keeping them beside each other is what keeps them equal
(``tests/test_decode.py`` holds the step to a full forward).

Token layout of one user (D = SID levels, collision suffix included)::

    [user bucket] [item_0 level 0 .. level D-1] [item_1 ...] ... [item_T-1 ...]

The vocabulary is ``user_buckets`` user tokens followed by one token range per
level (offsets derived from ``codebook_sizes``), so the same code at two levels
is two different tokens. The input is that sequence minus its last token, and
input position ``p`` predicts level ``p % D`` of item ``p // D``: the user token
predicts item 0's first code, and every item is predicted from the items before it.

Output head: the logits at a position cover only the level predicted there. The
head is tied to the token embedding (as in GPT-2) and each level reads its own
slice of it, rather than separate per-level heads: no extra parameters, one
table per token, and a level's softmax never spends probability (or compute) on
user tokens or codes of another level. With 2000 user buckets and 3 x 256 codes,
a full-vocabulary head would be over 10x wider than the slice it needs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from freshsid.artifacts import Manifest, artifact_dir, finish_manifest, read_manifest, reading
from freshsid.config import PROTOCOL, RETRIEVER_SIZES
from freshsid.errors import FreshsidError
from freshsid.sid.table import sid_shape_fingerprint

CHECKPOINT_KIND = "retriever"
WEIGHTS_FILE = "model.safetensors"
TRAIN_FLOPS_MULTIPLIER = 3  # backward costs about twice the forward (Kaplan et al. 2020)


class RetrieverConfig(BaseModel):
    """Size of the retriever; ``codebook_sizes`` comes from the SidTable, never retyped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    codebook_sizes: tuple[int, ...]
    width: int = Field(128, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    ffn: int = Field(512, gt=0)
    user_buckets: int = Field(2000, gt=0)
    max_history: int = Field(20, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> RetrieverConfig:
        if self.width % self.n_heads:
            raise ValueError(f"width {self.width} must be divisible by n_heads {self.n_heads}")
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes {self.codebook_sizes} must be non-empty and positive")
        return self

    @classmethod
    def preset(cls, name: str, *, codebook_sizes: tuple[int, ...], max_history: int = PROTOCOL.max_history) -> RetrieverConfig:
        """The retriever of size preset ``name`` (:data:`freshsid.config.RETRIEVER_SIZES`) for SIDs of ``codebook_sizes``."""
        if name not in RETRIEVER_SIZES:
            raise FreshsidError(f"Unknown retriever preset {name!r}; use one of {', '.join(RETRIEVER_SIZES)}.")
        return cls(codebook_sizes=tuple(codebook_sizes), max_history=max_history, **RETRIEVER_SIZES[name])

    @property
    def n_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def level_offsets(self) -> tuple[int, ...]:
        """First token id of each level's range (user tokens come first)."""
        return tuple(self.user_buckets + int(x) for x in np.cumsum((0, *self.codebook_sizes[:-1])))

    @property
    def vocab_size(self) -> int:
        return self.user_buckets + sum(self.codebook_sizes)

    @property
    def n_positions(self) -> int:
        """Longest input: user + max_history items + the target's first D-1 tokens."""
        return (self.max_history + 1) * self.n_levels



# ---------------------------------------------------------------- token batches


@dataclass(frozen=True)
class TokenBatch:
    """Token sequences for a batch of users, items packed to the left (right padding).

    Attributes:
        tokens: (B, 1 + T*D) long; pad positions hold token 0 and are never attended
            to by real positions (they come after them under the causal mask).
        item_valid: (B, T) bool, True for real items.
        item_weight: (B, T) float, loss weight of each item's prediction.
    """

    tokens: torch.Tensor
    item_valid: torch.Tensor
    item_weight: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real tokens (user token included)."""
        n_levels = (self.tokens.shape[1] - 1) // self.item_valid.shape[1]
        return 1 + self.item_valid.sum(1) * n_levels


def build_tokens(
    items: torch.Tensor | np.ndarray,
    codes_table: torch.Tensor | np.ndarray,
    user_tokens: torch.Tensor | np.ndarray,
    *,
    config: RetrieverConfig,
    item_weight: torch.Tensor | np.ndarray | None = None,
) -> TokenBatch:
    """Turn item histories into token sequences.

    Args:
        items: (B, T) item indices, padded with -1 on either side (or anywhere);
            real items keep their order and are packed to the left.
        codes_table: (n_items, D) SID of every item.
        user_tokens: (B,) user bucket in [0, user_buckets), see :func:`hash_user`.
        config: the model config (token offsets).
        item_weight: (B, T) loss weight per item, aligned with ``items``. Default:
            every real item except each user's first (it has no history to predict from).

    Returns:
        TokenBatch with T columns of items.
    """
    items = torch.as_tensor(np.asarray(items) if not isinstance(items, torch.Tensor) else items).long()
    codes = torch.as_tensor(codes_table).long().to(items.device)
    users = torch.as_tensor(user_tokens).long().to(items.device)
    if codes.ndim != 2 or codes.shape[1] != config.n_levels:
        raise FreshsidError(
            f"codes table has shape {tuple(codes.shape)} but the model expects {config.n_levels} levels; "
            "use the SidTable the model was trained for."
        )
    batch, n_items = items.shape
    if n_items > config.max_history + 1:
        raise FreshsidError(
            f"sequences of {n_items} items exceed max_history + 1 = {config.max_history + 1}; keep the last items."
        )
    valid = items >= 0
    # Stable pack: real items first in their order, pads after.
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    packed = items.gather(1, order)
    packed_valid = valid.gather(1, order)
    if item_weight is None:
        weight = packed_valid.float()
        weight[:, 0] = 0.0
    else:
        weight = torch.as_tensor(item_weight).float().to(items.device).gather(1, order) * packed_valid
    sids = codes[packed.clamp(min=0)]  # (B, T, D)
    uncoded = packed_valid & (sids < 0).any(-1)
    if bool(uncoded.any()):
        raise FreshsidError(
            f"item {int(packed[uncoded][0])} has no SID in the codes table; drop it from the history "
            "or use a table that covers it."
        )
    offsets = torch.tensor(config.level_offsets, device=items.device)
    sid_tokens = sids + offsets
    sid_tokens = torch.where(packed_valid[..., None], sid_tokens, 0)
    tokens = torch.cat([users[:, None], sid_tokens.reshape(batch, -1)], dim=1)
    return TokenBatch(tokens=tokens, item_valid=packed_valid, item_weight=weight)


def hash_user(user_ids: torch.Tensor | np.ndarray, buckets: int) -> torch.Tensor | np.ndarray:
    """Stable user bucket: splitmix64 of the integer id, modulo ``buckets``.

    Python's ``hash()`` is salted per process for strings; splitmix64 gives the same
    bucket on every machine and run. Returns the input's array type, int64.
    """
    as_torch = isinstance(user_ids, torch.Tensor)
    x = np.asarray(user_ids.cpu() if as_torch else user_ids)
    if not np.issubdtype(x.dtype, np.integer):
        raise FreshsidError(f"user ids must be integers, got {x.dtype}; map users to dense ids first.")
    out = (splitmix64(x.astype(np.uint64)) % np.uint64(buckets)).astype(np.int64)
    return torch.from_numpy(out).to(user_ids.device) if as_torch else out


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of each uint64 of ``x`` (wrapping arithmetic): a well-mixed,
    platform-independent 64-bit hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# ---------------------------------------------------------------- the network

KV = tuple[torch.Tensor, torch.Tensor]


class ByteDropout(nn.Module):
    """Inverted dropout whose mask is drawn as random bytes: an element is dropped when its
    byte is below ``round(p * 256)``, so the rate is ``p`` to within 1/512 and the kept
    elements are scaled by the exact inverse of the realised keep rate.

    Why not ``nn.Dropout``: on the CPU its Bernoulli draw took about a quarter of a training
    step (issue 14's profile); four mask bytes from one 32-bit draw are many times cheaper.
    The draw uses torch's generator, so ``torch.manual_seed`` makes it repeatable.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.threshold = round(p * 256)
        self.scale = 256 / (256 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int32, device=x.device).random_(-(2**31), 2**31)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep * self.scale


class CausalSelfAttention(nn.Module):
    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.width, 3 * config.width)  # one fused matmul for q, k, v
        self.proj = nn.Linear(config.width, config.width)
        # No dropout on the attention weights: it sends attention down the unfused math path
        # (a third slower on the CPU); the residual branches and embeddings keep theirs.
        self.resid_dropout = ByteDropout(config.dropout)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., C) -> three (..., H, C/H)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.n_heads, -1)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """x (B, L, C) -> y (B, L, C) and this layer's keys/values, each (B, H, L, C/H)."""
        q, k, v = (t.transpose(1, 2) for t in self._split(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(x.shape)
        return self.resid_dropout(self.proj(y)), (k, v)

    def step(self, x: torch.Tensor, prefix: KV, prefix_bias: torch.Tensor, generated: KV, slot: int) -> torch.Tensor:
        """One decoding step for W beams per user that share a cached prefix.

        The prefix is read once per user and broadcast over beams (no per-beam copy);
        only the few tokens generated so far are per beam. Scores over the prefix are one
        batched matmul; over the generated tokens (at most D-1) a product and a sum, which
        on the CPU beats a matmul per beam of a 1-row query.

        Args:
            x: (B, W, C) the newest token of each beam.
            prefix: keys (B*H, hd, Lp), transposed, and values (B*H, Lp, hd) of the shared
                history (:meth:`Retriever.decoding_prefix`).
            prefix_bias: (B*H, 1, Lp), 0 at real positions and -inf at padding.
            generated: keys, values (S, B, W, H, hd) of each beam's generated tokens, slot
                first; this token's are written into ``slot`` (in place), later slots are not read.
            slot: how many tokens each beam has generated before this one.

        Returns:
            y (B, W, C).
        """
        q, k, v = self._split(x)  # (B, W, H, hd)
        n_users, n_beams, n_heads, head = q.shape
        keys, values = generated
        keys[slot], values[slot] = k, v
        scale = 1.0 / math.sqrt(head)
        s_prefix = torch.baddbmm(prefix_bias, q.transpose(1, 2).reshape(-1, n_beams, head), prefix[0], alpha=scale)
        s_gen = (q * keys[: slot + 1]).sum(-1).mul_(scale)  # (s+1, B, W, H)
        scores = torch.cat([s_prefix, s_gen.permute(1, 3, 2, 0).reshape(-1, n_beams, slot + 1)], dim=-1).softmax(dim=-1)
        n_prefix = s_prefix.shape[-1]
        y = torch.bmm(scores[..., :n_prefix], prefix[1]).view(n_users, n_heads, n_beams, head).transpose(1, 2)
        a_gen = scores[..., n_prefix:].reshape(n_users, n_heads, n_beams, slot + 1).permute(3, 0, 2, 1)  # (s+1, B, W, H)
        y = y + (a_gen.unsqueeze(-1) * values[: slot + 1]).sum(0)
        return self.proj(y.reshape(x.shape))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, config.ffn),
            nn.GELU(),  # exact erf GELU: on CPU faster than GPT-2's tanh approximation
            nn.Linear(config.ffn, config.width),
            ByteDropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, KV]:
        a, kv = self.attn(self.ln_1(x))
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv

    def step(self, x: torch.Tensor, prefix: KV, prefix_bias: torch.Tensor, generated: KV, slot: int) -> torch.Tensor:
        x = x + self.attn.step(self.ln_1(x), prefix, prefix_bias, generated, slot)
        return x + self.mlp(self.ln_2(x))


class Retriever(nn.Module):
    """Decoder-only transformer over user + SID tokens; see the module docstring for the layout."""

    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.width)
        self.pos_emb = nn.Embedding(config.n_positions, config.width)
        self.drop = ByteDropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.width)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """hidden (..., C) -> logits (..., K_level) over that level's codes only (tied head slice)."""
        start = self.config.level_offsets[level]
        return F.linear(hidden, self.tok_emb.weight[start : start + self.config.codebook_sizes[level]])

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[KV]]:
        """tokens (B, L) input -> final hidden states (B, L, C) and per-layer KV cache."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        cache = []
        for block in self.blocks:
            x, kv = block(x)
            cache.append(kv)
        return self.ln_f(x), cache

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits for every item of every sequence.

        Args:
            tokens: (B, 1 + T*D) from :func:`build_tokens` (the last token is only a target).

        Returns:
            D tensors; entry d is (B, T, K_d): logits of item t's level-d code given
            the user, items < t and item t's levels < d.
        """
        d_levels = self.config.n_levels
        hidden, _ = self.encode(tokens[:, :-1])
        hidden = hidden.reshape(tokens.shape[0], -1, d_levels, hidden.shape[-1])
        return [self.level_logits(hidden[:, :, d], d) for d in range(d_levels)]

    def loss(self, batch: TokenBatch) -> torch.Tensor:
        """Weighted mean cross-entropy over the SID tokens of items with weight > 0."""
        weight = batch.item_weight
        return self.loss_sum(batch.tokens, weight) / (weight.sum() * self.config.n_levels).clamp(min=1e-12)

    def loss_sum(self, tokens: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor | None = None,
                 soft: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 smoothing: float = 0.0) -> torch.Tensor:
        """Weighted *sum* of the cross-entropy over every level of every item with weight > 0.

        tokens (B, 1 + T*D) and weight (B, T) as in :class:`TokenBatch`. Training divides
        by the global batch's weight, so that ranks holding parts of a batch add up to the
        one-process loss. Logits are computed only for weighted items: fine-tuning on a
        few target items then pays the head for those items alone; ``keep`` (N,) lists
        their flat indices in ``weight`` (found here when not given, which on CUDA costs a
        host synchronisation: training computes it on the host). ``soft(level, logits (N,
        K_level), weights (N,))``: a further term per level, added to the sum
        (distillation, :mod:`freshsid.retriever.distill`). ``smoothing``: label smoothing
        over each level's codebook.
        """
        cfg = self.config
        w = weight.reshape(-1)
        if keep is None:
            keep = (w > 0).nonzero().squeeze(1)
        hidden, targets, w = self.kept_hidden(tokens, keep), tokens[:, 1:].reshape(-1, cfg.n_levels)[keep], w[keep]
        total = hidden.new_zeros((), dtype=torch.float32)
        for d in range(cfg.n_levels):
            logits = self.level_logits(hidden[:, d], d).float()
            ce = F.cross_entropy(logits, targets[:, d] - cfg.level_offsets[d], reduction="none",
                                 label_smoothing=smoothing)
            total = total + (w * ce).sum() + (soft(d, logits, w) if soft is not None else 0.0)
        return total

    def kept_hidden(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(N, D, C) final hidden states at the positions that predict each level of the items
        at flat indices ``keep`` (N,) of the (B, T) item grid of ``tokens`` (B, 1 + T*D)."""
        hidden, _ = self.encode(tokens[:, :-1])
        return hidden.reshape(-1, self.config.n_levels, hidden.shape[-1])[keep]

    def decoding_prefix(self, cache: list[KV], lengths: torch.Tensor) -> tuple[list[KV], torch.Tensor]:
        """The history cache of :meth:`encode` laid out for :meth:`step`, once per decode.

        Args:
            cache: per layer, keys and values (B, H, Lp, hd).
            lengths: (B,) real tokens of each history.

        Returns:
            per layer keys (B*H, hd, Lp) and values (B*H, Lp, hd), contiguous; and the
            bias (B*H, 1, Lp) that masks padding (0 or -inf).
        """
        n_users, n_heads, n_prefix, _ = cache[0][0].shape
        prefix = [(k.transpose(-1, -2).flatten(0, 1).contiguous(), v.flatten(0, 1).contiguous()) for k, v in cache]
        valid = torch.arange(n_prefix, device=lengths.device)[None, :] < lengths[:, None]
        bias = torch.zeros(n_users, n_prefix, device=lengths.device).masked_fill_(~valid, float("-inf"))
        return prefix, bias.repeat_interleave(n_heads, 0)[:, None, :].to(cache[0][0].dtype)

    def generated_cache(self, n_users: int, n_beams: int, *, like: torch.Tensor) -> list[KV]:
        """Empty per-beam keys and values (D-1, B, W, H, hd) per layer, for :meth:`step` to fill; slot first,
        so that one slot of every beam is one block."""
        cfg = self.config
        shape = (cfg.n_levels - 1, n_users, n_beams, cfg.n_heads, cfg.width // cfg.n_heads)
        return [(like.new_empty(shape), like.new_empty(shape)) for _ in self.blocks]

    def compile_step(self) -> None:
        """Run :meth:`step` through ``torch.compile`` from now on, with dynamic shapes (one graph
        for every batch and beam width): on the CPU it fuses the norms, GELU and attention's
        elementwise work around the matmuls. It compiles at the next step, which then takes
        tens of seconds; if compiling fails (no C++ compiler, say), the step stays eager and a
        warning says why."""
        self._compiled_step = torch.compile(self._eager_step, dynamic=True)

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        prefix: list[KV],
        prefix_bias: torch.Tensor,
        generated: list[KV],
        slot: int,
    ) -> torch.Tensor:
        """Cached decoding step: tokens (B, W) at positions (B,) -> hidden (B, W, C); the
        tokens' keys and values go to ``slot`` of ``generated`` (see :meth:`CausalSelfAttention.step`)."""
        compiled = getattr(self, "_compiled_step", None)
        if compiled is not None:
            try:
                return compiled(tokens, positions, prefix, prefix_bias, generated, slot)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, once
                warnings.warn(f"torch.compile of the decoding step failed ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); decoding eagerly.", RuntimeWarning, stacklevel=2)
                self._compiled_step = None
        return self._eager_step(tokens, positions, prefix, prefix_bias, generated, slot)

    def _eager_step(self, tokens, positions, prefix, prefix_bias, generated, slot):  # noqa: ANN001, ANN202
        x = self.tok_emb(tokens) + self.pos_emb(positions)[:, None, :]
        for i, block in enumerate(self.blocks):
            x = block.step(x, prefix[i], prefix_bias, generated[i], slot)
        return self.ln_f(x)


def flops_per_token(config: RetrieverConfig, seq_len: int) -> float:
    """Analytic forward FLOPs per token (a multiply-add counts 2).

    Per layer: 2 * (3C^2 + C^2) for the QKV and output projections, 2 * 2 * C * F for
    the MLP, and 2 * 2 * L * C for attention scores (QK^T) and values (AV) over the full
    context L (as in Kaplan et al.; the causal mask would halve it on average). Plus
    the head: 2 * C * mean(K_d), since each position scores one level's codes only.
    Embeddings, norms and softmax are ignored. Training costs
    ``TRAIN_FLOPS_MULTIPLIER`` (3) times this.
    """
    c, f = config.width, config.ffn
    per_layer = 2 * 4 * c * c + 2 * 2 * c * f + 2 * 2 * seq_len * c
    head = 2 * c * float(np.mean(config.codebook_sizes))
    return float(config.n_layers * per_layer + head)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(
    folder: Path,
    model: Retriever,
    *,
    extra_meta: dict[str, Any] | None = None,
    inputs: dict[str, str] | None = None,
    compute: dict[str, float] | None = None,
    parent: str | None = None,
    seed: int | None = None,
) -> Manifest:
    """Write ``model.safetensors`` + a manifest whose config is the model config.

    ``info`` records the ``sid_shape_fingerprint`` and ``extra_meta`` (e.g. epochs, loss);
    ``inputs``/``compute``/``parent``/``seed`` go to the manifest fields of the same name.
    """
    info = {**(extra_meta or {}), "sid_shape_fingerprint": sid_shape_fingerprint(model.config.codebook_sizes)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with artifact_dir(Path(folder)) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        return finish_manifest(
            tmp,
            kind=CHECKPOINT_KIND,
            config=model.config.model_dump(mode="json"),
            info=info,
            inputs=inputs or {},
            compute=compute or {},
            parent=parent,
            seed=seed,
        )


def load_checkpoint(
    folder: Path,
    *,
    expected_shape: tuple[int, ...] | None = None,
) -> tuple[Retriever, Manifest]:
    """Load a retriever; ``expected_shape`` (codebook sizes of the SidTable to use) must match."""
    manifest = read_manifest(Path(folder), CHECKPOINT_KIND, require=(WEIGHTS_FILE,))
    try:
        config = RetrieverConfig.model_validate(manifest.config)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise FreshsidError(f"{folder} holds an invalid retriever config ({first}); retrain the checkpoint.") from None
    if expected_shape is not None and sid_shape_fingerprint(tuple(expected_shape)) != sid_shape_fingerprint(
        config.codebook_sizes
    ):
        raise FreshsidError(
            f"checkpoint {folder} was trained for SID shape {config.codebook_sizes}, not {tuple(expected_shape)}; "
            "use the SidTable it was trained with (or an aligned one of the same shape)."
        )
    model = Retriever(config)
    with reading(Path(folder) / WEIGHTS_FILE):
        model.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
    model.eval()
    return model, manifest
