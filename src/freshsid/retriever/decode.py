"""Trie-constrained beam search over SIDs, and exact scoring of given items.

An item's score is the sum over levels of the log-softmax of the level's logits
restricted to the codes the trie allows after the prefix so far; invalid
prefixes are never expanded, so every result is an allowed item.

The history is run once per user; its KV cache is broadcast over that user's
beams (see ``CausalSelfAttention.step``), and only the D-1 generated tokens are
cached per beam. All beams of all users advance together with tensor ops. A beam
whose prefix has a single child passes its score on to that child (log 1 = 0) and
runs no step; its steps run later, only if a descendant has a choice to make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from freshsid.errors import FreshsidError
from freshsid.retriever.model import KV, Retriever, build_tokens
from freshsid.runtime import current
from freshsid.sid.trie import SidTrie


def _check(model: Retriever, histories: torch.Tensor, codes: torch.Tensor, trie: SidTrie) -> None:
    cfg = model.config
    if tuple(trie.codebook_sizes) != tuple(cfg.codebook_sizes):
        raise FreshsidError(
            f"the trie has SID shape {trie.codebook_sizes} but the model expects {cfg.codebook_sizes}; "
            "build the trie from the SidTable the model was trained for."
        )
    if histories.ndim != 2 or histories.shape[1] > cfg.max_history:
        raise FreshsidError(
            f"histories must be (users, <= {cfg.max_history}) item indices, got {tuple(histories.shape)}; "
            "keep each user's last items."
        )
    if histories.numel() and int(histories.max()) >= len(codes):
        raise FreshsidError(f"a history item index is >= the codes table size {len(codes)}; fix the item mapping.")


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the allowed entries; -inf elsewhere (also for rows with none allowed)."""
    logp = logits.masked_fill(~mask, float("-inf")).log_softmax(dim=-1)
    return logp.masked_fill(~mask, float("-inf"))  # all-masked rows give NaN above


def log_softmax_by_group(logit: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """logit (N,) -> (N,) its log-softmax among the entries of the same ``group`` (N,) in
    [0, n_groups): a node's children scored against each other alone, with no dense mask."""
    top = torch.full((n_groups,), float("-inf"), device=logit.device).scatter_reduce(0, group, logit, "amax")
    mass = torch.zeros(n_groups, device=logit.device).index_add_(0, group, (logit - top[group]).exp())
    return logit - (top + mass.log())[group]


@dataclass
class _Beams:
    """The beams of every user at one depth, and what their steps have cached.

    nodes, scores: (B, W) trie nodes (-1: none) and summed log-probabilities (-inf: none);
    paths: (B, W, d) each beam's codes so far; cache: per layer, keys and values
    (D-1, B, W, H, hd) of each beam's generated tokens, of which the first ``filled``
    (B, W) slots are computed: a beam that never had a choice to make skipped its steps.
    """

    nodes: torch.Tensor
    scores: torch.Tensor
    paths: torch.Tensor
    cache: list[KV]
    filled: torch.Tensor

    def keep(self, parent: torch.Tensor, codes: torch.Tensor, nodes: torch.Tensor, scores: torch.Tensor) -> _Beams:
        """The beams one level down: each a child ``codes`` (B, W') of beam ``parent`` (B, W')."""
        paths = torch.cat([self.paths.gather(1, parent[..., None].expand(-1, -1, self.paths.shape[2])),
                           codes[..., None]], dim=2)
        return _Beams(nodes, scores, paths, _pick(self.cache, parent, paths.shape[2] - 1),
                      self.filled.gather(1, parent))


def _pick(cache: list[KV], beams: torch.Tensor, slots: int) -> list[KV]:
    """Each user's ``beams`` (B, W') of a per-beam cache (S, B, W, ...), as a new cache (S, B, W', ...)
    of which only the first ``slots`` are copied (no beam has computed the others)."""
    rows = _rows(beams, cache[0][0].shape[2])

    def take(t: torch.Tensor) -> torch.Tensor:
        new = t.new_empty((t.shape[0], *beams.shape, *t.shape[3:]))
        for slot in range(slots):
            torch.index_select(t[slot].flatten(0, 1), 0, rows, out=new[slot].flatten(0, 1))
        return new

    return [(take(keys), take(values)) for keys, values in cache]


def _rows(beams: torch.Tensor, n_beams: int) -> torch.Tensor:
    """(B, W') beam indices -> (B*W',) rows of the flattened (B*W, ...) beams."""
    return (beams + n_beams * torch.arange(len(beams), device=beams.device)[:, None]).reshape(-1)


def _hidden(model: Retriever, history: tuple, state: _Beams, beams: torch.Tensor, level: int) -> torch.Tensor:
    """Hidden states (B, W', C) that predict ``level`` for each user's ``beams`` (B, W').

    Runs the steps those beams lack (their slots ``filled`` .. level-1, on them alone) and
    writes their cache back, so that a beam pays for its steps only once it has a choice
    to make. ``history``: the prefix, its padding bias and the lengths (B,)."""
    prefix, prefix_bias, lengths = history
    rows = _rows(beams, state.nodes.shape[1])
    # every beam, in order (the first level past the root, as a rule): the steps write in place
    every = beams.shape[1] == state.nodes.shape[1] and bool((rows == torch.arange(len(rows), device=rows.device)).all())
    first = int(state.filled.reshape(-1)[rows].min())
    sub = state.cache if every else _pick(state.cache, beams, first)
    paths = state.paths.flatten(0, 1).index_select(0, rows).unflatten(0, beams.shape)
    for slot in range(first, level):
        tokens = paths[..., slot] + model.config.level_offsets[slot]
        hidden = model.step(tokens, lengths + slot, prefix, prefix_bias, sub, slot)
    if every:
        state.filled.fill_(level)
    elif level < model.config.n_levels - 1:  # the last level's steps are never read again
        for kv, sub_kv in zip(state.cache, sub, strict=True):
            for t, part in zip(kv, sub_kv, strict=True):
                for slot in range(first, level):
                    t[slot].flatten(0, 1).index_copy_(0, rows, part[slot].flatten(0, 1))
        state.filled.view(-1)[rows] = level
    return hidden


def _choosing(state: _Beams, trie: SidTrie, level: int):
    """Every child edge of every beam, and the beams with more than one child first.

    Returns beam_of (E,) flat beam, leaf (E,) edge index, count (B, W) children a beam has,
    and beams (B, W') each user's beams with a choice (W': the most any user has), padded
    with others."""
    n_users, n_beams = state.nodes.shape
    beam_of, edge = trie.children(level, state.nodes.reshape(-1).to(trie.device))
    count = torch.bincount(beam_of, minlength=n_users * n_beams).view(n_users, n_beams)
    device = state.nodes.device
    beam_of, edge, count = beam_of.to(device), edge.to(device), count.to(device)
    need = count > 1
    width = int(need.sum(1).max()) if need.numel() else 0
    beams = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :width]  # beams with a choice first
    return beam_of, edge, count, beams


def _level(model, trie, history, state: _Beams, level: int, keep: int) -> _Beams:
    """The ``keep`` best children (per user) of all the beams, one level down.

    A beam with one child passes its score on unchanged (log 1 = 0 whatever the logits),
    so only beams with a choice run a step and score their codes; with 256 codes a level
    and tens of thousands of items, most beams past the first level have one child. The
    candidates are laid out as the dense (B, W, K) table of scores over every beam's codes,
    as if every beam had been scored, so that ties fall as they always have."""
    n_users, n_beams = state.nodes.shape
    n_codes = model.config.codebook_sizes[level]
    beam_of, edge, count, beams = _choosing(state, trie, level)
    total = torch.full((n_users, n_beams, n_codes), float("-inf"), device=state.scores.device)
    if beams.shape[1] > 0:
        chosen = state.nodes.gather(1, beams)
        mask = trie.allowed_mask(level, chosen.reshape(-1).to(trie.device)).to(chosen.device)
        logits = model.level_logits(_hidden(model, history, state, beams, level), level)  # (B, W', K)
        scored = state.scores.gather(1, beams)[..., None] + _masked_log_softmax(logits.float(), mask.view(logits.shape))
        total.scatter_(1, beams[..., None].expand(-1, -1, n_codes), scored)
    # after the scored rows: the padding among them may be beams with one child
    only = (count == 1).reshape(-1)[beam_of]
    code = trie.edge_codes[level][edge[only].to(trie.device)].to(beam_of.device)
    total.view(-1)[beam_of[only] * n_codes + code] = state.scores.reshape(-1)[beam_of[only]]
    total = total.view(n_users, -1)
    # Never keep more beams than any user has valid continuations.
    n_valid = int(torch.isfinite(total).sum(1).max()) if total.numel() else 0
    scores, flat = total.topk(max(1, min(keep, n_valid)), dim=1)
    parent, codes = flat // n_codes, flat % n_codes
    nodes = trie.child(level, state.nodes.gather(1, parent).reshape(-1).to(trie.device), codes.reshape(-1))
    nodes = torch.where(torch.isfinite(scores), nodes.to(scores.device).view(scores.shape), -1)
    return state.keep(parent, codes, nodes, torch.where(nodes >= 0, scores, float("-inf")))


def _last_level(model, trie, history, state: _Beams, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items and scores (B, <= top_k) of the last level, scoring each beam's children only.

    The last level is the collision suffix: its codebook is as wide as the largest
    collision group (thousands of codes in a million-item catalog), while a beam has
    few children. So logits are computed for those children alone (no dense beams x K
    mask or logits), and only for beams with a choice to make, as at every level.
    """
    cfg = model.config
    level = cfg.n_levels - 1
    nodes, scores = state.nodes, state.scores
    n_users, n_beams = nodes.shape
    device = nodes.device
    if trie.n_items == 0:  # a trie without items: nothing to return
        return (torch.full((n_users, 1), -1, dtype=torch.long, device=device),
                torch.full((n_users, 1), float("-inf"), device=device))
    beam_of, leaf, count, beams = _choosing(state, trie, level)
    n_edges, width = len(leaf), beams.shape[1]
    logp = torch.zeros(n_edges, device=device)
    if width > 0:
        hidden = _hidden(model, history, state, beams, level)  # (B, width, C)
        row = torch.full((n_users, n_beams), -1, dtype=torch.long, device=device)
        row.scatter_(1, beams, torch.arange(width, device=device).expand(n_users, width))
        chosen = (count > 1).reshape(-1)[beam_of]
        b = beam_of[chosen]
        code = trie.edge_codes[level][leaf[chosen].to(trie.device)].to(device)
        head = model.tok_emb.weight[cfg.level_offsets[level] + code]  # (E', C): the tied head's rows
        logit = (hidden[b // n_beams, row.reshape(-1)[b]] * head).sum(-1).float()
        logp[chosen] = log_softmax_by_group(logit, b, n_users * n_beams)  # over each beam's children
    candidate = scores.reshape(-1)[beam_of] + logp
    # Each user's candidates side by side, padded with -inf, then its top_k.
    user = beam_of // n_beams
    per_user = torch.bincount(user, minlength=n_users)
    columns = max(1, int(per_user.max()) if n_edges else 1)
    position = torch.arange(n_edges, device=device) - (torch.cumsum(per_user, 0) - per_user)[user]
    table = torch.full((n_users, columns), float("-inf"), device=device)
    table[user, position] = candidate
    leaves = torch.full((n_users, columns), -1, dtype=torch.long, device=device)
    leaves[user, position] = leaf
    best, pick = table.topk(min(top_k, columns), dim=1)
    picked = leaves.gather(1, pick)
    items = trie.item_of(picked.reshape(-1).to(trie.device)).to(device).view(n_users, -1)
    items = torch.where(torch.isfinite(best), items, -1)
    return items, best


@torch.inference_mode()
def _search(
    model: Retriever, tokens: torch.Tensor, lengths: torch.Tensor, trie: SidTrie, beam: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, L) right-padded histories with lengths (B,) -> items, scores (B, <= top_k).

    Beams that run out of valid continuations carry node -1 and score -inf; a
    level keeps no more beams than the richest user has valid candidates.
    """
    cfg = model.config
    device = tokens.device
    n_users, n_levels = tokens.shape[0], cfg.n_levels
    hidden, cache = model.encode(tokens)
    history = (*model.decoding_prefix(cache, lengths), lengths)
    last = hidden[torch.arange(n_users, device=device), lengths - 1]  # (B, C)
    # Level 0: the root's codes, scored from the history's last position.
    root = torch.full((n_users,), trie.root, dtype=torch.long, device=device)
    mask = trie.allowed_mask(0, root.to(trie.device)).to(device)
    total = _masked_log_softmax(model.level_logits(last, 0).float(), mask)  # (B, K_0)
    n_valid = int(torch.isfinite(total).sum(1).max()) if total.numel() else 0
    scores, codes = total.topk(max(1, min(top_k if n_levels == 1 else beam, n_valid)), dim=1)
    nodes = trie.child(0, root.repeat_interleave(scores.shape[1]).to(trie.device), codes.reshape(-1))
    nodes = torch.where(torch.isfinite(scores), nodes.to(device).view(scores.shape), -1)
    scores = torch.where(nodes >= 0, scores, float("-inf"))
    if n_levels == 1:
        return trie.item_of(nodes.reshape(-1).to(trie.device)).to(device).view(n_users, -1), scores
    state = _Beams(nodes, scores, codes[..., None], model.generated_cache(n_users, nodes.shape[1], like=history[1]),
                   torch.zeros_like(nodes))
    for level in range(1, n_levels - 1):
        state = _level(model, trie, history, state, level, beam)
    return _last_level(model, trie, history, state, top_k)


def beam_search(
    model: Retriever,
    histories: torch.Tensor | np.ndarray,
    user_tokens: torch.Tensor | np.ndarray,
    codes_table: torch.Tensor | np.ndarray,
    trie: SidTrie,
    *,
    beam: int,
    top_k: int,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top items for each user by trie-constrained beam search.

    Args:
        model: the retriever (temporarily put in eval mode).
        histories: (B, T) item indices, T <= max_history, padded with -1.
        user_tokens: (B,) user buckets (:func:`~freshsid.retriever.model.hash_user`).
        codes_table: (n_items, D) SID of every item (to encode histories).
        trie: allowed SIDs; results are its items.
        beam: prefixes kept per level (levels 0..D-2).
        top_k: items returned; the last level keeps ``top_k`` of all expansions.
        batch_size: users decoded together; memory grows as batch_size * beam * K.

    Returns:
        items (B, top_k) long, best first, -1 where fewer valid items exist;
        scores (B, top_k) float, summed masked log-probabilities, -inf at padding.
    """
    if beam < 1 or top_k < 1 or batch_size < 1:
        raise FreshsidError(f"beam ({beam}), top_k ({top_k}) and batch_size ({batch_size}) must be >= 1.")
    return decode_batches(model, histories, user_tokens, codes_table, trie, top_k=top_k, batch_size=batch_size,
                          search=lambda tokens, lengths: _search(model, tokens, lengths, trie, beam, top_k))


def decode_batches(
    model: Retriever,
    histories: torch.Tensor | np.ndarray,
    user_tokens: torch.Tensor | np.ndarray,
    codes_table: torch.Tensor | np.ndarray,
    trie: SidTrie,
    *,
    top_k: int,
    batch_size: int,
    search: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``search`` (tokens (b, L), lengths (b,) -> items, scores (b, <= top_k)) over
    ``batch_size`` users at a time, in eval mode, and lay the results out as
    :func:`beam_search` returns them (inputs as it takes them)."""
    device = next(model.parameters()).device
    histories = torch.as_tensor(histories).long().to(device)
    users = torch.as_tensor(user_tokens).long().to(device)
    codes = torch.as_tensor(codes_table).long().to(device)
    _check(model, histories, codes, trie)
    out_items = torch.full((len(histories), top_k), -1, dtype=torch.long, device=device)
    out_scores = torch.full((len(histories), top_k), float("-inf"), device=device)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(histories), batch_size):
            rows = slice(start, start + batch_size)
            batch = build_tokens(histories[rows], codes, users[rows], config=model.config)
            with current().autocast():
                items, scores = search(batch.tokens, batch.lengths)
            out_items[rows, : items.shape[1]] = items
            out_scores[rows, : scores.shape[1]] = scores
    finally:
        model.train(was_training)
    return out_items, out_scores


@torch.inference_mode()
def score_items(
    model: Retriever,
    histories: torch.Tensor | np.ndarray,
    user_tokens: torch.Tensor | np.ndarray,
    codes_table: torch.Tensor | np.ndarray,
    trie: SidTrie,
    *,
    items: torch.Tensor | np.ndarray,
) -> torch.Tensor:
    """Exact trie-masked score of given candidate items, by a full forward pass (no cache).

    The reference for beam search and a reranker for small candidate sets; it
    runs one sequence per (user, candidate), so keep B * n modest.

    Args:
        histories: (B, T) item indices padded with -1; user_tokens: (B,).
        items: (B, n) candidates; -1 or items outside the trie score -inf.

    Returns:
        (B, n) float scores, comparable with :func:`beam_search`'s.
    """
    cfg = model.config
    device = next(model.parameters()).device
    histories = torch.as_tensor(histories).long().to(device)
    users = torch.as_tensor(user_tokens).long().to(device)
    codes = torch.as_tensor(codes_table).long().to(device)
    cand = torch.as_tensor(items).long().to(device)
    _check(model, histories, codes, trie)
    n_users, n_cand = cand.shape
    flat = cand.reshape(-1).clamp(min=0)
    seqs = torch.cat([histories.repeat_interleave(n_cand, 0), flat[:, None]], dim=1)
    batch = build_tokens(seqs, codes, users.repeat_interleave(n_cand), config=cfg)
    was_training = model.training
    model.eval()
    try:
        hidden, _ = model.encode(batch.tokens[:, :-1])
    finally:
        model.train(was_training)
    # The candidate is packed right after the n real history items: positions n*D .. n*D + D-1.
    n_hist = (histories >= 0).sum(1).repeat_interleave(n_cand)
    pos = n_hist[:, None] * cfg.n_levels + torch.arange(cfg.n_levels, device=device)
    h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # (N, D, C)
    sid = codes[flat]
    nodes = torch.full_like(flat, trie.root)
    total = torch.zeros(len(flat), device=device)
    for level in range(cfg.n_levels):
        mask = trie.allowed_mask(level, nodes.to(trie.device)).to(device)
        logp = _masked_log_softmax(model.level_logits(h[:, level], level).float(), mask)
        total = total + logp.gather(1, sid[:, level : level + 1]).squeeze(1)
        nodes = trie.child(level, nodes.to(trie.device), sid[:, level].to(trie.device)).to(device)
    total = torch.where((nodes >= 0) & (cand.reshape(-1) >= 0), total, float("-inf"))
    return total.view(n_users, n_cand)
