"""Trie-constrained beam search over SIDs, and exact scoring of given items.

An item's score is the sum over levels of the log-softmax of the level's logits
restricted to the codes the trie allows after the prefix so far; invalid
prefixes are never expanded, so every result is an allowed item.

The history is run once per user; its KV cache is broadcast over that user's
beams (see ``CausalSelfAttention.step``), and only the D-1 generated tokens are
cached per beam. All beams of all users advance together with tensor ops.
"""

from __future__ import annotations

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


def _last_level(model, trie, nodes, scores, codes, lengths, prefix, prefix_bias, generated, top_k):
    """Items and scores (B, <= top_k) of the last level, scoring each beam's children only.

    The last level is the collision suffix: its codebook is as wide as the largest
    collision group (thousands of codes in a million-item catalog), while a beam has
    few children. So logits are computed for those children alone (no dense beams x K
    mask or logits), and only for beams with a choice to make: a beam with a single
    child scores log 1 = 0 for it whatever the logits, and with a collision suffix that
    is most beams (about a third less decoding work).

    nodes, scores: (B, W) the beams at depth D-1; codes: (B, W) their level D-2 codes.
    """
    cfg = model.config
    level = cfg.n_levels - 1
    n_users, n_beams = nodes.shape
    device = nodes.device
    # Every child edge of every beam, beam-major, codes ascending within a beam.
    if trie.n_items == 0:  # a trie without items: nothing to return
        return (torch.full((n_users, 1), -1, dtype=torch.long, device=device),
                torch.full((n_users, 1), float("-inf"), device=device))
    flat = nodes.reshape(-1).to(trie.device)
    beam_of, leaf = trie.children(level, flat)
    n_edges = len(leaf)
    count = torch.bincount(beam_of, minlength=len(flat))
    beam_of, leaf, count = beam_of.to(device), leaf.to(device), count.to(device)
    logp = torch.zeros(n_edges, device=device)
    need = (count > 1).view(n_users, n_beams)
    width = int(need.sum(1).max()) if need.numel() else 0
    if width > 0:
        beams = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :width]  # needing beams first
        step_tokens = codes.gather(1, beams) + cfg.level_offsets[level - 1]
        sub_cache = (model.generated_cache(n_users, width, like=prefix_bias) if generated is None
                     else _pick(generated, beams))
        hidden = model.step(step_tokens, lengths + level - 1, prefix, prefix_bias, sub_cache, level - 1)  # (B, width, C)
        row = torch.full((n_users, n_beams), -1, dtype=torch.long, device=device)
        row.scatter_(1, beams, torch.arange(width, device=device).expand(n_users, width))
        chosen = need.reshape(-1)[beam_of]
        b = beam_of[chosen]
        code = trie.edge_codes[level][leaf[chosen].to(trie.device)].to(device)
        head = model.tok_emb.weight[cfg.level_offsets[level] + code]  # (E', C): the tied head's rows
        logit = (hidden[b // n_beams, row.reshape(-1)[b]] * head).sum(-1).float()
        # Log-softmax over each beam's children.
        top = torch.full((len(flat),), float("-inf"), device=device).scatter_reduce(0, b, logit, "amax")
        mass = torch.zeros(len(flat), device=device).index_add_(0, b, (logit - top[b]).exp())
        logp[chosen] = logit - (top + mass.log())[b]
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


def _pick(generated: list[KV], beams: torch.Tensor) -> list[KV]:
    """Each user's ``beams`` (B, W') of the per-beam cache (B, W, ...), as a new cache (B, W', ...)."""
    n_users, n_beams = generated[0][0].shape[:2]
    rows = (beams + n_beams * torch.arange(n_users, device=beams.device)[:, None]).reshape(-1)
    return [tuple(t.flatten(0, 1).index_select(0, rows).unflatten(0, beams.shape) for t in kv) for kv in generated]


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
    prefix, prefix_bias = model.decoding_prefix(cache, lengths)
    last = hidden[torch.arange(n_users, device=device), lengths - 1]  # (B, C)

    nodes = torch.full((n_users, 1), trie.root, dtype=torch.long, device=device)
    scores = torch.zeros(n_users, 1, device=device)
    codes = generated = None
    for level in range(n_levels):
        if level > 0 and level == n_levels - 1:
            return _last_level(model, trie, nodes, scores, codes, lengths, prefix, prefix_bias, generated, top_k)
        n_beams, n_codes = nodes.shape[1], cfg.codebook_sizes[level]
        mask = trie.allowed_mask(level, nodes.reshape(-1)).to(device).view(n_users, n_beams, n_codes)
        if level == 0:
            logits = model.level_logits(last, 0)[:, None, :]  # (B, 1, K_0)
        else:
            if generated is None:
                generated = model.generated_cache(n_users, n_beams, like=prefix_bias)
            step_tokens = codes + cfg.level_offsets[level - 1]
            h = model.step(step_tokens, lengths + level - 1, prefix, prefix_bias, generated, level - 1)
            logits = model.level_logits(h, level)  # (B, W, K)
        total = (scores[..., None] + _masked_log_softmax(logits.float(), mask)).view(n_users, -1)
        # Never keep more beams than any user has valid continuations.
        n_valid = int(torch.isfinite(total).sum(1).max()) if total.numel() else 0
        width = max(1, min(top_k if level == n_levels - 1 else beam, n_valid))
        scores, flat = total.topk(width, dim=1)
        parent, codes = flat // n_codes, flat % n_codes
        nodes = trie.child(level, nodes.gather(1, parent).reshape(-1).to(trie.device), codes.reshape(-1))
        nodes = nodes.to(device).view(n_users, width)
        nodes = torch.where(torch.isfinite(scores), nodes, -1)
        scores = torch.where(nodes >= 0, scores, float("-inf"))
        if generated is not None:
            generated = _pick(generated, parent)
    items = trie.item_of(nodes.reshape(-1).to(trie.device)).to(device).view(n_users, -1)
    return items, scores


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
                items, scores = _search(model, batch.tokens, batch.lengths, trie, beam, top_k)
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
