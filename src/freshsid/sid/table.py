"""SidTable: item -> SID code tuple, stored as parquet plus a manifest.

The table owns the SID *shape* (levels, codebook sizes, suffix size); every other
stage reads those numbers from here and never retypes them. A retriever
checkpoint records :attr:`SidTable.shape_fingerprint` and refuses a table of
another shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from safetensors.numpy import load_file, save_file

from freshsid.artifacts import Manifest, artifact_dir, finish_manifest, fingerprint_of, read_manifest, reading
from freshsid.errors import FreshsidError
from freshsid.sid.trie import SidTrie

KIND = "sid_table"
TABLE_FILE = "sids.parquet"
TOKENIZER_FILE = "tokenizer.safetensors"


def sid_shape_fingerprint(codebook_sizes: tuple[int, ...]) -> str:
    """Fingerprint of a SID vocabulary shape; a checkpoint only fits tables with the same one."""
    sizes = [int(k) for k in codebook_sizes]
    return fingerprint_of({"codebook_sizes": sizes, "n_levels": len(sizes) - 1})


@dataclass(frozen=True, eq=False)
class SidTable:
    """Item -> code tuple.

    Attributes:
        items: (n,) sorted dense item indices covered by the table.
        codes: (n, D) int32, D = n_levels + 1 (the last level is the collision suffix);
            rows are unique.
        codebook_sizes: D codebook sizes, suffix size last.
        item_ids: (n,) original item ids (for outputs and reports).
        meta: what the manifest records about how the table was made
            (tokenizer, params, window, seed, stats, parent).
        tokenizer_state: the fitted tokenizer's weights (``state()``), so that a refresh can
            continue from it; None for tables that are not a tokenizer's direct output
            (an aligned table's codes are relabelled).

    Examples:
        >>> table = builder.table_
        >>> table.codes.shape == (len(table.items), table.depth)
        True
        >>> from pathlib import Path
        >>> manifest = table.save(Path("legacy-sids"))
        >>> bool((freshsid.SidTable.load(Path("legacy-sids")).codes == table.codes).all())
        True
    """

    items: np.ndarray
    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    item_ids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    tokenizer_state: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n, depth = self.codes.shape
        assert self.items.shape == (n,) and depth == len(self.codebook_sizes)
        assert n == 0 or bool(np.all(np.diff(self.items) > 0)), "items must be sorted and unique"

    @property
    def n_levels(self) -> int:
        """Semantic levels, without the collision suffix."""
        return len(self.codebook_sizes) - 1

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def shape(self) -> dict[str, Any]:
        return {"codebook_sizes": list(self.codebook_sizes), "n_levels": self.n_levels}

    @property
    def shape_fingerprint(self) -> str:
        return sid_shape_fingerprint(self.codebook_sizes)

    @property
    def content_hash(self) -> str:
        return fingerprint_of([self.items.tolist(), self.codes.ravel().tolist()])

    def __len__(self) -> int:
        return len(self.items)

    def codes_for(self, items: np.ndarray) -> np.ndarray:
        """(..., D) codes of the given dense items; rows are -1 for items not in the table
        (and for the padding index -1)."""
        items = np.asarray(items)
        pos = np.searchsorted(self.items, items)
        pos = np.minimum(pos, max(len(self.items) - 1, 0))
        known = (self.items[pos] == items) & (items >= 0) if len(self.items) else np.zeros(items.shape, bool)
        out = np.where(known[..., None], self.codes[pos], -1)
        return out.astype(np.int64)

    def check_item_ids(self, item_ids: np.ndarray, *, logs_name: str) -> None:
        """Refuse logs whose dense items are not the ones this table codes.

        ``item_ids`` (n_items,) are the logs' original ids in dense order. Dense indices
        stay valid when logs are appended to, so the original ids are compared, not a
        fingerprint of the logs.
        """
        item_ids = np.asarray(item_ids)
        if len(self.items) and (
            self.items[-1] >= len(item_ids) or not np.array_equal(item_ids[self.items].astype(str), self.item_ids.astype(str))
        ):
            raise FreshsidError(
                f"This SID table ({len(self)} items, window {self.meta.get('window')}) codes items that are not "
                f"those of {logs_name}; pass the dataset the table was built from."
            )

    def lookup_table(self, n_items: int) -> np.ndarray:
        """(n_items, D) dense codes table indexed by item, -1 rows for items not covered."""
        table = np.full((n_items, self.depth), -1, dtype=np.int64)
        table[self.items] = self.codes
        return table

    def trie(self, allowed_items: np.ndarray | None = None) -> SidTrie:
        """Prefix trie over the table's SIDs, optionally restricted to an allowed subset.
        Leaves report dense item indices."""
        keep = self.items if allowed_items is None else self.items[np.isin(self.items, allowed_items)]
        # The trie's ``items`` are rows of the codes it is given: a dense item-indexed table.
        return SidTrie.from_codes(self.lookup_table(int(self.items.max(initial=-1)) + 1), self.codebook_sizes, items=keep)

    def save(self, out: Path) -> Manifest:
        """Write the parquet table and its manifest atomically."""
        columns = {"item": self.items.astype(np.int64), "item_id": self.item_ids.astype(str)}
        columns |= {f"c{d}": self.codes[:, d].astype(np.int32) for d in range(self.depth)}
        with artifact_dir(out) as tmp:
            pl.DataFrame(columns).write_parquet(tmp / TABLE_FILE, statistics=False)
            if self.tokenizer_state is not None:
                save_file({k: np.ascontiguousarray(v) for k, v in self.tokenizer_state.items()}, str(tmp / TOKENIZER_FILE))
            manifest = finish_manifest(
                tmp,
                kind=KIND,
                config={**self.shape, "tokenizer": self.meta.get("tokenizer", {})},
                seed=self.meta.get("seed"),
                inputs=self.meta.get("inputs", {}),
                compute=self.meta.get("compute", {}),
                parent=self.meta.get("parent"),
                info={
                    "n_items": len(self),
                    "window": self.meta.get("window"),
                    "content_hash": self.content_hash,
                    "shape_fingerprint": self.shape_fingerprint,
                    "stats": self.meta.get("stats", {}),
                },
            )
        return manifest

    @classmethod
    def load(cls, folder: Path) -> SidTable:
        """Read and validate a table; refuses corrupted or inconsistent ones."""
        folder = Path(folder)
        manifest = read_manifest(folder, KIND, require=(TABLE_FILE,))
        try:
            sizes = tuple(int(s) for s in manifest.config["codebook_sizes"])
        except (KeyError, TypeError, ValueError):
            raise FreshsidError(f"{folder} has no valid codebook_sizes in its manifest; rebuild the table.") from None
        with reading(folder / TABLE_FILE):
            frame = pl.read_parquet(folder / TABLE_FILE)
        expected = ["item", "item_id", *[f"c{d}" for d in range(len(sizes))]]
        if frame.columns != expected:
            raise FreshsidError(f"{folder / TABLE_FILE} has columns {frame.columns}, expected {expected}; rebuild the table.")
        types = [frame.schema[c] for c in expected]
        if not (types[0].is_integer() and types[1] == pl.String and all(t.is_integer() for t in types[2:])):
            raise FreshsidError(f"{folder / TABLE_FILE} has column types {[str(t) for t in types]}, expected integer "
                                "item and codes and a string item_id; rebuild the table.")
        codes = frame.select(expected[2:]).to_numpy().astype(np.int32)
        table = cls(
            items=frame["item"].to_numpy(),
            codes=codes,
            codebook_sizes=sizes,
            item_ids=frame["item_id"].to_numpy(),
            meta={
                "tokenizer": manifest.config.get("tokenizer", {}),
                "seed": manifest.seed,
                "inputs": manifest.inputs,
                "compute": manifest.compute,
                "parent": manifest.parent,
                "window": manifest.info.get("window"),
                "stats": manifest.info.get("stats", {}),
                "fingerprint": manifest.fingerprint,
            },
            tokenizer_state=_tokenizer_state(folder) if TOKENIZER_FILE in manifest.files else None,
        )
        bad = (codes < 0) | (codes >= np.array(sizes)[None, :])
        if bad.any():
            raise FreshsidError(f"{folder} has codes outside their codebook sizes {list(sizes)}; rebuild the table.")
        if table.content_hash != manifest.info.get("content_hash"):
            raise FreshsidError(f"{folder} content does not match its manifest; rebuild the table.")
        if len(np.unique(codes, axis=0)) != len(codes):
            raise FreshsidError(f"{folder} has duplicate SIDs; rebuild it with a larger suffix size.")
        return table


def _tokenizer_state(folder: Path) -> dict[str, np.ndarray]:
    with reading(folder / TOKENIZER_FILE):
        return load_file(str(folder / TOKENIZER_FILE))
