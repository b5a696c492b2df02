"""The trie-constrained beam search as it was at 78e1f7c, kept verbatim as the reference the
faster decode must equal (:func:`same_ranking`): the same items, the same scores to 1e-5.

It calls the model's ``encode`` and ``level_logits`` and the trie's ``allowed_mask``,
``child`` and ``item_of``; the cached decoding step (``Retriever.step`` and the blocks'
``step`` then) and everything the decode adds (masks, beam bookkeeping, the last level's
child scoring) are copied here unchanged.
"""

from __future__ import annotations

import math

import torch

from freshsid.retriever.model import Retriever, build_tokens
from freshsid.sid.trie import SidTrie


def _attention_step(attn, x, prefix, prefix_valid, generated):
    q, k, v = (t.transpose(1, 2) for t in attn._split(x))  # (B, H, W, hd)
    k, v = k.unsqueeze(3), v.unsqueeze(3)
    if generated is not None:
        k, v = torch.cat([generated[0], k], dim=3), torch.cat([generated[1], v], dim=3)
    scale = 1.0 / math.sqrt(q.shape[-1])
    s_prefix = torch.matmul(q, prefix[0].transpose(-1, -2)) * scale  # (B, H, W, Lp)
    s_prefix = s_prefix.masked_fill(~prefix_valid[:, None, None, :], float("-inf"))
    s_gen = torch.matmul(q.unsqueeze(3), k.transpose(-1, -2)).squeeze(3) * scale  # (B, H, W, s+1)
    att = torch.cat([s_prefix, s_gen], dim=-1).softmax(dim=-1)
    n_prefix = s_prefix.shape[-1]
    y = torch.matmul(att[..., :n_prefix], prefix[1])
    y = y + torch.matmul(att[..., n_prefix:].unsqueeze(3), v).squeeze(3)
    y = y.transpose(1, 2).reshape(x.shape)
    return attn.proj(y), (k, v)


def _step(model, tokens, positions, prefix, prefix_valid, generated):
    """Retriever.step: tokens (B, W) -> hidden (B, W, C), the generated cache (B, H, W, s, hd) per layer."""
    x = model.tok_emb(tokens) + model.pos_emb(positions)[:, None, :]
    new_cache = []
    for i, block in enumerate(model.blocks):
        a, kv = _attention_step(block.attn, block.ln_1(x), prefix[i], prefix_valid,
                                None if generated is None else generated[i])
        x = x + a
        x = x + block.mlp(block.ln_2(x))
        new_cache.append(kv)
    return model.ln_f(x), new_cache


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the allowed entries; -inf elsewhere (also for rows with none allowed)."""
    logp = logits.masked_fill(~mask, float("-inf")).log_softmax(dim=-1)
    return logp.masked_fill(~mask, float("-inf"))  # all-masked rows give NaN above


def _last_level(model, trie, nodes, scores, codes, lengths, prefix, prefix_valid, generated, top_k):
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
    indptr = trie.indptr[level]
    if len(indptr) == 1:  # a trie without items: nothing to return
        return (torch.full((n_users, 1), -1, dtype=torch.long, device=device),
                torch.full((n_users, 1), float("-inf"), device=device))
    flat = nodes.reshape(-1).to(trie.device)
    valid = flat >= 0
    safe = torch.where(valid, flat, 0)
    first = indptr[safe]
    count = torch.where(valid, indptr[safe + 1] - first, 0)
    n_edges = int(count.sum())
    beam_of = torch.repeat_interleave(torch.arange(len(flat), device=trie.device), count, output_size=n_edges)
    leaf = first[beam_of] + torch.arange(n_edges, device=trie.device) - (torch.cumsum(count, 0) - count)[beam_of]
    beam_of, leaf, count = beam_of.to(device), leaf.to(device), count.to(device)
    logp = torch.zeros(n_edges, device=device)
    need = (count > 1).view(n_users, n_beams)
    width = int(need.sum(1).max()) if need.numel() else 0
    if width > 0:
        beams = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :width]  # needing beams first
        index = beams[:, None, :, None, None]
        sub_cache = [
            (k.gather(2, index.expand(-1, k.shape[1], -1, k.shape[3], k.shape[4])),
             v.gather(2, index.expand(-1, v.shape[1], -1, v.shape[3], v.shape[4])))
            for k, v in generated
        ] if generated is not None else None
        step_tokens = codes.gather(1, beams) + cfg.level_offsets[level - 1]
        hidden, _ = _step(model, step_tokens, lengths + level - 1, prefix, prefix_valid, sub_cache)  # (B, width, C)
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
    hidden, prefix = model.encode(tokens)
    prefix_valid = torch.arange(tokens.shape[1], device=device)[None, :] < lengths[:, None]
    last = hidden[torch.arange(n_users, device=device), lengths - 1]  # (B, C)

    nodes = torch.full((n_users, 1), trie.root, dtype=torch.long, device=device)
    scores = torch.zeros(n_users, 1, device=device)
    codes = generated = None
    for level in range(n_levels):
        if level > 0 and level == n_levels - 1:
            return _last_level(model, trie, nodes, scores, codes, lengths, prefix, prefix_valid, generated, top_k)
        n_beams, n_codes = nodes.shape[1], cfg.codebook_sizes[level]
        mask = trie.allowed_mask(level, nodes.reshape(-1)).to(device).view(n_users, n_beams, n_codes)
        if level == 0:
            logits = model.level_logits(last, 0)[:, None, :]  # (B, 1, K_0)
        else:
            step_tokens = codes + cfg.level_offsets[level - 1]
            h, generated = _step(model, step_tokens, lengths + level - 1, prefix, prefix_valid, generated)
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
            index = parent[:, None, :, None, None]
            generated = [
                tuple(t.gather(2, index.expand(-1, t.shape[1], -1, t.shape[3], t.shape[4])) for t in kv)
                for kv in generated
            ]
    items = trie.item_of(nodes.reshape(-1).to(trie.device)).to(device).view(n_users, -1)
    return items, scores


@torch.inference_mode()
def reference_beam_search(model: Retriever, histories, user_tokens, codes_table, trie, *, beam: int, top_k: int):
    """(items, scores), each (B, top_k) with -1 / -inf padding, all users in one batch."""
    histories = torch.as_tensor(histories).long()
    codes = torch.as_tensor(codes_table).long()
    batch = build_tokens(histories, codes, torch.as_tensor(user_tokens).long(), config=model.config)
    items, scores = _search(model.eval(), batch.tokens, batch.lengths, trie, beam, top_k)
    out_items = torch.full((len(histories), top_k), -1, dtype=torch.long)
    out_scores = torch.full((len(histories), top_k), float("-inf"))
    out_items[:, : items.shape[1]], out_scores[:, : scores.shape[1]] = items, scores
    return out_items, out_scores


def same_ranking(items, scores, ref_items, ref_scores, *, atol: float = 1e-5) -> bool:
    """The same items as the reference, scores within ``atol`` rank by rank, and each item's
    own score within ``atol`` of the reference's: two items may trade places only where the
    reference scores them equal to ``atol`` (float noise decides such ties either way)."""
    if not torch.equal(torch.isinf(scores), torch.isinf(ref_scores)):
        return False
    finite = torch.isfinite(ref_scores)
    if not torch.allclose(scores[finite], ref_scores[finite], atol=atol, rtol=0):
        return False
    for row, ref_row, row_scores, ref_row_scores in zip(items, ref_items, scores, ref_scores, strict=True):
        if torch.equal(row, ref_row):
            continue
        if sorted(row.tolist()) != sorted(ref_row.tolist()):
            return False
        reference = dict(zip(ref_row.tolist(), ref_row_scores.tolist(), strict=True))
        moved = row != ref_row
        if any(abs(reference[i] - s) > atol for i, s in zip(row[moved].tolist(), row_scores[moved].tolist(), strict=True)):
            return False
    return True
