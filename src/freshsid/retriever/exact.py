"""Exact scoring of every allowed item: the retriever's own ranking, with nothing pruned.

Beam search keeps ``beam`` prefixes per level, so an item whose first codes score low is
lost however well its whole SID scores. Here every allowed item is scored by its whole SID,
teacher-forced down the trie: the sum over levels of the log-softmax of the level's logits
over the codes the trie allows after the item's own prefix. That is the score beam search
gives the items it keeps (and :func:`~freshsid.retriever.decode.score_items` gives a few
given items, one full forward each), so the top K here is the model's ranking; what beam
search loses against it is search error, what it lacks against a dense model is model error.

A trie node is a prefix shared by every item below it, so it is run once per user (the
history once, then one cached step per node), not once per item. A node with one child
passes its score on (log 1 = 0), and a node runs its step only if it or a node below it
has a choice to make; with a collision-suffix level most nodes above the leaves have one.
Memory per user grows with the catalog: the cache of the widest depth's running nodes,
(levels-1) x layers x width each, and one level's edges x width for its logits.
"""

from __future__ import annotations

import numpy as np
import torch

from freshsid.errors import FreshsidError
from freshsid.retriever.decode import decode_batches, log_softmax_by_group
from freshsid.retriever.model import Retriever
from freshsid.sid.trie import SidTrie


def exact_top_k(
    model: Retriever,
    histories: torch.Tensor | np.ndarray,
    user_tokens: torch.Tensor | np.ndarray,
    codes_table: torch.Tensor | np.ndarray,
    trie: SidTrie,
    *,
    top_k: int,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_k`` allowed items of each user by their exact score under the model.

    Args and returns as :func:`~freshsid.retriever.decode.beam_search` (no beam): items
    (B, top_k) long, best first, -1 past the trie's items; scores (B, top_k), summed masked
    log-probabilities, -inf at padding. ``top_k`` >= the trie's items ranks every one.
    ``batch_size``: users scored together; memory grows as batch_size x catalog.
    """
    if top_k < 1 or batch_size < 1:
        raise FreshsidError(f"top_k ({top_k}) and batch_size ({batch_size}) must be >= 1.")
    running = _running_nodes(trie)
    return decode_batches(model, histories, user_tokens, codes_table, trie, top_k=top_k, batch_size=batch_size,
                          search=lambda tokens, lengths: _score_all(model, tokens, lengths, trie, running, top_k))


def _running_nodes(trie: SidTrie) -> list[torch.Tensor]:
    """Per depth 0..D-1, (n_nodes(d),) bool: the nodes that run a step, those with more than
    one child or with a running node below them (their cached keys are read there)."""
    running: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool)] * trie.depth
    below = None
    for depth in reversed(range(trie.depth)):
        owner, _ = trie.children(depth, torch.arange(trie.n_nodes(depth), device=trie.device))
        run = torch.bincount(owner, minlength=trie.n_nodes(depth)) > 1
        if below is not None:
            run |= torch.bincount(owner[below], minlength=trie.n_nodes(depth)) > 0
        running[depth] = below = run
    return running


@torch.inference_mode()
def _score_all(
    model: Retriever, tokens: torch.Tensor, lengths: torch.Tensor, trie: SidTrie, running: list[torch.Tensor],
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, L) right-padded histories with lengths (B,) -> items, scores (B, <= top_k)
    of every leaf of ``trie``, level by level: ``scores`` (B, n_nodes(d)) holds every prefix's
    summed log-probability, ``state`` (B, W, C) the hidden states of the W running nodes of
    depth d, at ``row`` (n_nodes(d),) (-1: not running), and ``generated`` their cache."""
    cfg = model.config
    n_users, device = tokens.shape[0], tokens.device
    if trie.n_items == 0:
        return (torch.full((n_users, 1), -1, dtype=torch.long, device=device),
                torch.full((n_users, 1), float("-inf"), device=device))
    hidden, cache = model.encode(tokens)
    prefix, prefix_bias = model.decoding_prefix(cache, lengths)
    state = hidden[torch.arange(n_users, device=device), lengths - 1][:, None]  # the root: (B, 1, C)
    row = torch.zeros(1, dtype=torch.long, device=device)
    scores = torch.zeros(n_users, 1, device=device)
    empty = hidden.new_empty((0, n_users, 1, cfg.n_heads, cfg.width // cfg.n_heads))
    generated = [(empty, empty) for _ in model.blocks]
    for level in range(cfg.n_levels):
        owner, _ = trie.children(level, torch.arange(trie.n_nodes(level), device=trie.device))
        owner, codes = owner.to(device), trie.edge_codes[level].to(device)  # per edge: its parent node and code
        scores = scores[:, owner] + _edge_log_probs(model, state, row, owner, codes, level)
        if level == cfg.n_levels - 1:
            break
        # The next depth's nodes are this depth's edges; those that run take one step.
        step = running[level + 1].to(device).nonzero().squeeze(1)
        parent = row[owner[step]]
        generated = [(_grow(keys, parent), _grow(values, parent)) for keys, values in generated]
        step_tokens = (codes[step] + cfg.level_offsets[level]).expand(n_users, -1)
        # No running node: no choice is left below this depth, and every score is final.
        state = (model.step(step_tokens, lengths + level, prefix, prefix_bias, generated, level) if len(step)
                 else state[:, :0])
        row = torch.full((len(owner),), -1, dtype=torch.long, device=device)
        row[step] = torch.arange(len(step), device=device)
    best, leaf = scores.topk(min(top_k, trie.n_items), dim=1)
    return trie.item_of(leaf.reshape(-1).to(trie.device)).to(device).view(leaf.shape), best


def _edge_log_probs(model: Retriever, state: torch.Tensor, row: torch.Tensor, owner: torch.Tensor,
                    codes: torch.Tensor, level: int) -> torch.Tensor:
    """(B, E) log-probability of each edge's code given its parent's prefix, among the
    parent's children; 0 where the parent has one child. Logits only for the edges of
    parents with a choice: each is the parent's hidden state against the code's row of the
    tied head (as :meth:`Retriever.level_logits` computes it)."""
    n_users = state.shape[0]
    n_parents = len(row)
    count = torch.bincount(owner, minlength=n_parents)
    choose = (count[owner] > 1).nonzero().squeeze(1)
    logp = state.new_zeros((n_users, len(owner)), dtype=torch.float32)
    if len(choose) == 0:
        return logp
    head = model.tok_emb.weight[model.config.level_offsets[level] + codes[choose]]  # (E', C)
    logit = (state[:, row[owner[choose]]] * head).sum(-1).float()  # (B, E')
    group = owner[choose] + n_parents * torch.arange(n_users, device=state.device)[:, None]
    logp[:, choose] = log_softmax_by_group(logit.reshape(-1), group.reshape(-1), n_users * n_parents).view(logit.shape)
    return logp


def _grow(cache: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """A cache (S, B, W, H, hd) of a depth's running nodes -> (S + 1, B, W', H, hd) for the
    next depth's running nodes, each with its ``parent`` (W',) row's S slots and one slot to fill."""
    n_slots, n_users, _, n_heads, head = cache.shape
    fresh = cache.new_empty((1, n_users, len(parent), n_heads, head))
    return torch.cat([cache.index_select(2, parent), fresh])
