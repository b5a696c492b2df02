"""SID build stage and the SidTable artifact: determinism, uniqueness, validation."""

import json

import numpy as np
import polars as pl
import pytest

from freshsid.errors import FreshsidError
from freshsid.sid.build import SidConfig, build_table
from freshsid.sid.table import SidTable


def blobs(n=600, d=16, centers=12, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d)) * 4
    return (means[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("tokenizer", ["rqkmeans", "rqvae"])
def test_same_seed_byte_identical_and_other_seed_valid(tmp_path, tokenizer):
    X = blobs()
    items = np.arange(len(X)) * 2  # sparse dense-ids: the table must not assume 0..n-1
    cfg = SidConfig(tokenizer=tokenizer, n_levels=2, codebook_size=8, suffix_size=600, seed=3,
                    epochs=20 if tokenizer == "rqvae" else None)
    a, _ = build_table(X, items, items.astype(str), cfg, window="0:8")
    b, _ = build_table(X, items, items.astype(str), cfg, window="0:8")
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    assert (tmp_path / "a/sids.parquet").read_bytes() == (tmp_path / "b/sids.parquet").read_bytes()
    c, _ = build_table(X, items, items.astype(str), cfg.model_copy(update={"seed": 4}), window="0:8")
    for table in (a, c):
        assert len(np.unique(table.codes, axis=0)) == len(table)  # every item a unique SID
        assert (table.codes < np.array(table.codebook_sizes)).all()
    # The tokenizer's state is saved with the table, and continuing from it unchanged
    # (warm_epochs=0) codes the same embeddings identically.
    loaded = SidTable.load(tmp_path / "a")
    assert loaded.tokenizer_state.keys() == a.tokenizer_state.keys()
    again, _ = build_table(X, items, items.astype(str), cfg, window="0:9", init_state=loaded.tokenizer_state)
    np.testing.assert_array_equal(again.codes, a.codes)
    stats = a.meta["stats"]
    assert 0 <= stats["collision_rate"] <= 1 and len(stats["utilisation"]) == 2
    assert a.meta["compute"]["tokenizer_seconds"] > 0 and a.meta["compute"]["tokenizer_flops"] > 0


def test_round_trip_trie_and_lookup(tmp_path):
    X = blobs(n=200)
    items = np.arange(200) + 5
    table, _ = build_table(X, items, items.astype(str), SidConfig(tokenizer="rqkmeans", n_levels=2, codebook_size=8, suffix_size=64), window="0:8")
    table.save(tmp_path / "t")
    loaded = SidTable.load(tmp_path / "t")
    assert np.array_equal(loaded.codes, table.codes) and loaded.codebook_sizes == table.codebook_sizes
    assert loaded.shape_fingerprint == table.shape_fingerprint
    lookup = loaded.lookup_table(300)
    assert (lookup[:5] == -1).all() and np.array_equal(lookup[items], table.codes)
    trie = loaded.trie(allowed_items=items[::2])
    assert trie.n_items == 100
    assert trie.is_valid(table.codes[::2]).all()


def test_load_refuses_tampered_and_inconsistent_tables(tmp_path):
    X = blobs(n=100)
    items = np.arange(100)
    table, _ = build_table(X, items, items.astype(str), SidConfig(tokenizer="rqkmeans", n_levels=2, codebook_size=4, suffix_size=64), window="0:8")
    table.save(tmp_path / "t")
    path = tmp_path / "t/sids.parquet"
    frame = pl.read_parquet(path)
    frame.with_columns(pl.lit(0, dtype=pl.Int32).alias("c0")).write_parquet(path)
    with pytest.raises(FreshsidError, match="hash"):
        SidTable.load(tmp_path / "t")
    with pytest.raises(FreshsidError, match="not a freshsid artifact"):
        SidTable.load(tmp_path)
    table.save(tmp_path / "u")
    manifest = json.loads((tmp_path / "u/manifest.json").read_text())
    manifest["kind"] = "retriever"
    (tmp_path / "u/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FreshsidError, match="sid_table"):
        SidTable.load(tmp_path / "u")


def test_suffix_too_small_is_a_clear_error():
    X = np.repeat(blobs(n=10), 20, axis=0)  # 20 identical copies of each point
    items = np.arange(len(X))
    with pytest.raises(FreshsidError, match="suffix"):
        build_table(X, items, items.astype(str), SidConfig(tokenizer="rqkmeans", n_levels=1, codebook_size=4, suffix_size=8), window="0:8")


def test_load_refuses_float_codes_even_under_a_resealed_manifest(tmp_path):
    """Codes written as floats would be truncated silently: the column types are checked."""
    import json

    import polars as pl

    from freshsid.artifacts import Manifest, file_sha256

    items = np.arange(100)
    table, _ = build_table(blobs(n=100), items, items.astype(str),
                           SidConfig(tokenizer="rqkmeans", n_levels=2, codebook_size=4, suffix_size=64), window="0:8")
    table.save(tmp_path / "t")
    path = tmp_path / "t" / "sids.parquet"
    frame = pl.read_parquet(path)
    frame.with_columns(pl.col("c0").cast(pl.Float64) + 0.4).write_parquet(path)
    data = json.loads((tmp_path / "t" / "manifest.json").read_text())
    data["files"]["sids.parquet"] = file_sha256(path)
    data["digest"] = Manifest.model_validate(data).expected_digest
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(FreshsidError, match="column types"):
        SidTable.load(tmp_path / "t")
