"""A prefix trie over Semantic IDs, for constrained decoding.

Depth ``d`` holds the distinct SID prefixes of length ``d`` (depth 0: the root
alone; depth ``D``: the leaves, one per item). Each depth stores a CSR over its
nodes: ``indptr[d]`` (n_nodes_d + 1,) delimits each node's outgoing edges, and
``edge_codes[d]`` (n_nodes_{d+1},) holds their codes, sorted within a node.

The trick that keeps the structure small: rows of the codes table are sorted
lexicographically once, so the prefixes of length ``d + 1`` appear in that same
order, and *edge ``e`` of depth ``d`` is node ``e`` of depth ``d + 1``*. No child
table is stored, and a leaf id is a row of the sorted table, so ``item_of`` is a
single gather. Lookups go through ``edge_keys[d] = parent * K_d + code``, which is
sorted too, so ``child`` is one ``searchsorted``.

Masks are built per query batch by scatter, never as a dense (nodes x K) table:
at 1M items and 512 codes per level such a table would need gigabytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from freshsid.errors import FreshsidError

ArrayLike = np.ndarray | torch.Tensor


def _to_tensor(x: ArrayLike, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.long)
    return torch.as_tensor(np.asarray(x, dtype=np.int64), device=device)


def _like_input(result: torch.Tensor, original: ArrayLike) -> ArrayLike:
    """Return numpy when the caller passed numpy, so either world stays in its own types."""
    return result if isinstance(original, torch.Tensor) else result.cpu().numpy()


class SidTrie:
    """Prefix trie of the SIDs of a set of items.

    Args:
        codes: (n_items, D) int, the SID of every item (row = item index); rows
            not in ``items`` are ignored (they may be -1 in a dense lookup table).
        codebook_sizes: (D,) codes per level; every code must lie in ``[0, K_d)``.
        items: optional (m,) item indices to keep; leaves then report these
            original indices. Default: every row of ``codes``.

    Raises:
        FreshsidError: codes out of range, wrong shape, or two kept items sharing a SID.
    """

    def __init__(
        self,
        codes: ArrayLike,
        codebook_sizes: Sequence[int],
        *,
        items: ArrayLike | None = None,
    ) -> None:
        codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes)
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)
        depth = len(self.codebook_sizes)
        if codes.ndim != 2 or codes.shape[1] != depth or not np.issubdtype(codes.dtype, np.integer):
            raise FreshsidError(
                f"SID codes must be an integer array of shape (n_items, {depth}), got {codes.dtype} "
                f"{codes.shape}; pass the codes table that matches the codebook sizes."
            )
        if depth == 0 or min(self.codebook_sizes) < 1:
            raise FreshsidError(f"codebook sizes {self.codebook_sizes} must be positive; fix the SID shape.")
        if items is None:
            item_ids = np.arange(len(codes), dtype=np.int64)
        else:
            item_ids = np.asarray(items.cpu() if isinstance(items, torch.Tensor) else items, dtype=np.int64)
            if item_ids.ndim != 1 or (item_ids.size and (item_ids.min() < 0 or item_ids.max() >= len(codes))):
                raise FreshsidError(
                    f"allowed items must be a 1-D array of indices in [0, {len(codes)}); fix the allowed-item list."
                )
        kept = codes[item_ids].astype(np.int64)
        # Only kept rows are checked: a dense lookup table may hold -1 rows for items it does not cover.
        sizes = np.asarray(self.codebook_sizes, dtype=np.int64)
        if kept.size and ((kept < 0).any() or (kept >= sizes[None, :]).any()):
            raise FreshsidError(
                f"SID codes fall outside the codebook sizes {self.codebook_sizes}; rebuild the codes table."
            )

        # np.lexsort sorts by the last key first, so pass columns reversed.
        order = np.lexsort(kept.T[::-1]) if len(kept) else np.zeros(0, dtype=np.int64)
        rows = kept[order]
        # differs[i, d]: row i's prefix of length d + 1 differs from row i - 1's.
        differs = np.ones((len(rows), depth), dtype=bool)
        if len(rows) > 1:
            differs[1:] = np.logical_or.accumulate(rows[1:] != rows[:-1], axis=1)
        if len(rows) > 1 and not differs[1:, -1].all():
            dup = int(np.flatnonzero(~differs[1:, -1])[0]) + 1
            a, b = sorted((int(item_ids[order[dup - 1]]), int(item_ids[order[dup]])))
            raise FreshsidError(
                f"items {a} and {b} share the SID {tuple(rows[dup].tolist())}; "
                "add a collision-suffix level so every SID is unique."
            )

        self.indptr: list[torch.Tensor] = []
        self.edge_codes: list[torch.Tensor] = []
        self.edge_keys: list[torch.Tensor] = []
        parent = np.zeros(len(rows), dtype=np.int64)  # node id at depth d of every row
        n_nodes = 1
        for d in range(depth):
            starts = np.flatnonzero(differs[:, d])  # first row of each depth-(d+1) node
            edge_parent = parent[starts]
            edge_code = rows[starts, d]
            counts = np.bincount(edge_parent, minlength=n_nodes)
            self.indptr.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)))
            self.edge_codes.append(torch.from_numpy(edge_code.copy()))
            self.edge_keys.append(torch.from_numpy(edge_parent * self.codebook_sizes[d] + edge_code))
            parent = np.cumsum(differs[:, d]) - 1
            n_nodes = len(starts)
        self.leaf_items = torch.from_numpy(item_ids[order])
        self.root = 0
        self.device = torch.device("cpu")

    @classmethod
    def from_codes(
        cls,
        codes: ArrayLike,
        codebook_sizes: Sequence[int],
        items: ArrayLike | None = None,
    ) -> SidTrie:
        """Build the trie of ``codes`` (n_items, D), optionally restricted to ``items`` (m,)."""
        return cls(codes, codebook_sizes, items=items)

    @property
    def depth(self) -> int:
        """D, the number of SID levels (collision suffix included)."""
        return len(self.codebook_sizes)

    @property
    def n_items(self) -> int:
        """Number of leaves (allowed items)."""
        return len(self.leaf_items)

    def n_nodes(self, depth: int) -> int:
        """Number of distinct prefixes of length ``depth`` (``depth`` in 0..D)."""
        return 1 if depth == 0 else len(self.edge_codes[depth - 1])

    def to(self, device: torch.device | str) -> SidTrie:
        """Move the index tensors to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        for table in (self.indptr, self.edge_codes, self.edge_keys):
            table[:] = [t.to(self.device) for t in table]
        self.leaf_items = self.leaf_items.to(self.device)
        return self

    def allowed_mask(self, depth: int, nodes: ArrayLike) -> ArrayLike:
        """Which codes may follow each prefix node.

        Args:
            depth: 0..D-1, the depth of ``nodes`` (= the level of the next code).
            nodes: (M,) node ids at that depth; -1 (an invalid prefix) allows nothing.

        Returns:
            (M, K_depth) bool.
        """
        t = _to_tensor(nodes, self.device)
        mask = torch.zeros(len(t), self.codebook_sizes[depth], dtype=torch.bool, device=self.device)
        rows, edges = self.children(depth, t)
        mask[rows, self.edge_codes[depth][edges]] = True
        return _like_input(mask, nodes)

    def children(self, depth: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every child edge of each node, node by node, codes ascending within a node.

        Args:
            depth: 0..D-1, the depth of ``nodes``.
            nodes: (M,) long node ids on the trie's device; -1 (an invalid prefix) has none.

        Returns:
            owner (E,), the position in ``nodes`` of each edge's parent, and edge (E,), the
            edge's index at this depth: its code is ``edge_codes[depth][edge]`` and its child
            is node ``edge`` of depth + 1 (the leaf ``edge`` when depth = D-1).
        """
        indptr = self.indptr[depth]
        if len(self.edge_codes[depth]) == 0:  # no prefix this long: no node has a child
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty
        valid = nodes >= 0
        safe = torch.where(valid, nodes, 0)
        start = indptr[safe]
        count = torch.where(valid, indptr[safe + 1] - start, 0)
        total = int(count.sum())
        owner = torch.repeat_interleave(torch.arange(len(nodes), device=self.device), count, output_size=total)
        # The position of each edge inside its node's segment, plus the segment's start.
        first = torch.cumsum(count, 0) - count
        return owner, start[owner] + torch.arange(total, device=self.device) - first[owner]

    def child(self, depth: int, nodes: ArrayLike, codes: ArrayLike) -> ArrayLike:
        """Follow one edge per query.

        Args:
            depth: 0..D-1, the depth of ``nodes``.
            nodes: (M,) node ids (-1 stays -1).
            codes: (M,) code at level ``depth``.

        Returns:
            (M,) node ids at depth + 1 (leaf ids when depth = D-1); -1 where the code
            is not allowed after that prefix.
        """
        t_nodes, t_codes = _to_tensor(nodes, self.device), _to_tensor(codes, self.device)
        keys = self.edge_keys[depth]
        size = self.codebook_sizes[depth]
        ok = (t_nodes >= 0) & (t_codes >= 0) & (t_codes < size)
        query = torch.where(ok, t_nodes * size + t_codes, -1)
        if len(keys) == 0:
            return _like_input(torch.full_like(t_nodes, -1), nodes)
        pos = torch.searchsorted(keys, query).clamp_(max=len(keys) - 1)
        return _like_input(torch.where(ok & (keys[pos] == query), pos, -1), nodes)

    def walk(self, prefixes: ArrayLike) -> ArrayLike:
        """Node id of each prefix.

        Args:
            prefixes: (M, d) codes of levels 0..d-1, d <= D.

        Returns:
            (M,) node ids at depth d; -1 for prefixes not in the trie.
        """
        t = _to_tensor(prefixes, self.device)
        nodes = torch.full((t.shape[0],), self.root, dtype=torch.long, device=self.device)
        for d in range(t.shape[1]):
            nodes = self.child(d, nodes, t[:, d])
        return _like_input(nodes, prefixes)

    def item_of(self, leaf_nodes: ArrayLike) -> ArrayLike:
        """(M,) leaf ids -> (M,) original item indices (-1 stays -1)."""
        t = _to_tensor(leaf_nodes, self.device)
        items = torch.where(t >= 0, self.leaf_items[t.clamp(min=0)], -1) if self.n_items else torch.full_like(t, -1)
        return _like_input(items, leaf_nodes)

    def is_valid(self, codes: ArrayLike) -> ArrayLike:
        """(m, D) full SIDs -> (m,) bool, True where the SID belongs to an allowed item."""
        t = _to_tensor(codes, self.device)
        if t.ndim != 2 or t.shape[1] != self.depth:
            raise FreshsidError(f"SIDs to check must have shape (m, {self.depth}), got {tuple(t.shape)}.")
        return _like_input(self.walk(t) >= 0, codes)
