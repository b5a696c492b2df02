"""Retriever model: token layout, shapes, causality, weighted loss, FLOPs, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.artifacts import read_manifest
from freshsid.config import TrainConfig
from freshsid.errors import FreshsidError
from freshsid.retriever.model import (
    Retriever,
    RetrieverConfig,
    build_tokens,
    flops_per_token,
    hash_user,
    load_checkpoint,
    save_checkpoint,
    sid_shape_fingerprint,
)

SIZES = (5, 4, 3)


def tiny(**over) -> RetrieverConfig:
    base = dict(
        codebook_sizes=SIZES, width=16, n_layers=2, n_heads=2, ffn=32, user_buckets=7, max_history=4, dropout=0.0
    )
    return RetrieverConfig(**{**base, **over})


def codes_table(n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, n) for k in SIZES], axis=1)


def test_presets_and_validation():
    cpu = RetrieverConfig.preset("cpu", codebook_sizes=(256, 256, 256, 8))
    assert (cpu.width, cpu.n_layers, cpu.n_heads, cpu.ffn, cpu.user_buckets) == (128, 4, 4, 512, 2000)
    paper = RetrieverConfig.preset("paper", codebook_sizes=(512, 512, 512, 8))
    assert (paper.width, paper.n_heads, paper.ffn, paper.user_buckets, paper.max_history) == (768, 6, 1024, 8000, 20)
    assert paper.level_offsets == (8000, 8512, 9024, 9536) and paper.vocab_size == 9544
    with pytest.raises(FreshsidError):
        RetrieverConfig.preset("huge", codebook_sizes=(4,))
    with pytest.raises(ValueError):
        tiny(width=15)
    with pytest.raises(ValueError):
        tiny(unknown=1)
    with pytest.raises(ValueError):
        tiny().width = 3  # frozen


def test_build_tokens_layout_and_padding_sides():
    cfg, codes = tiny(), codes_table()
    left = build_tokens(np.array([[-1, -1, 3, 4, 5], [1, 2, 3, 4, 6]]), codes, np.array([1, 2]), config=cfg)
    right = build_tokens(np.array([[3, 4, 5, -1, -1], [1, 2, 3, 4, 6]]), codes, np.array([1, 2]), config=cfg)
    assert torch.equal(left.tokens, right.tokens) and torch.equal(left.item_weight, right.item_weight)
    tok = left.tokens[0]
    assert tok[0] == 1
    assert tok[1:4].tolist() == [off + int(c) for off, c in zip(cfg.level_offsets, codes[3], strict=True)]
    assert left.lengths.tolist() == [1 + 3 * 3, 1 + 5 * 3]
    # Default weights: every real item except the first.
    assert left.item_weight.tolist() == [[0, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    given_w = build_tokens(np.array([[-1, 3, 4]]), codes, np.array([0]), config=cfg, item_weight=np.array([[1, 0, 1]]))
    assert given_w.item_weight.tolist() == [[0, 1, 0]]  # pad weight dropped, packed with the items
    with pytest.raises(FreshsidError):
        build_tokens(np.zeros((1, 6), dtype=np.int64), codes, np.array([0]), config=cfg)
    lookup = np.concatenate([codes, np.full((1, 3), -1)])  # item 12 has no SID
    with pytest.raises(FreshsidError, match="item 12 has no SID"):
        build_tokens(np.array([[1, 12]]), lookup, np.array([0]), config=cfg)


def test_forward_shapes_and_causality():
    torch.manual_seed(0)
    cfg, codes = tiny(), codes_table()
    model = Retriever(cfg).eval()
    batch = build_tokens(np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]), codes, np.array([3, 4]), config=cfg)
    logits = model(batch.tokens)
    assert [tuple(x.shape) for x in logits] == [(2, 5, k) for k in SIZES]
    inputs = batch.tokens[:, :-1]
    hidden, cache = model.encode(inputs)
    assert len(cache) == cfg.n_layers and cache[0][0].shape == (2, cfg.n_heads, 15, cfg.width // cfg.n_heads)
    for cut in (1, 7, 12):
        changed = inputs.clone()
        changed[:, cut:] = cfg.vocab_size - 1 - changed[:, cut:]
        other, _ = model.encode(changed)
        assert torch.allclose(hidden[:, :cut], other[:, :cut], atol=1e-6)
        assert not torch.allclose(hidden[:, cut:], other[:, cut:], atol=1e-4)


def test_loss_respects_item_weights():
    torch.manual_seed(1)
    cfg, codes = tiny(), codes_table()
    model = Retriever(cfg).eval()
    items = np.array([[1, 2, 3, 4, 5]])
    weight = np.array([[0, 0, 1, 0, 0]], dtype=np.float32)
    batch = build_tokens(items, codes, np.array([0]), config=cfg, item_weight=weight)
    logits = model(batch.tokens)
    expect = np.mean([F.cross_entropy(logits[d][0, 2], torch.tensor(codes[3, d])).item() for d in range(3)])
    assert model.loss(batch).item() == pytest.approx(expect, rel=1e-5)
    # Changing an unweighted later item cannot change the loss; changing the target does.
    assert model.loss(build_tokens(np.array([[1, 2, 3, 7, 8]]), codes, [0], config=cfg, item_weight=weight)).item() == (
        pytest.approx(expect, rel=1e-5)
    )
    assert model.loss(build_tokens(np.array([[1, 2, 9, 4, 5]]), codes, [0], config=cfg, item_weight=weight)).item() != (
        pytest.approx(expect, rel=1e-5)
    )
    # No weighted item: a zero loss, not a division by zero.
    zero = build_tokens(items, codes, np.array([0]), config=cfg, item_weight=np.zeros((1, 5)))
    assert model.loss(zero).item() == 0.0


def test_label_smoothing_spreads_each_level_over_its_codebook():
    torch.manual_seed(2)
    cfg, codes = tiny(), codes_table()
    model = Retriever(cfg).eval()
    weight = np.array([[0, 1, 0, 2, 0]], dtype=np.float32)
    batch = build_tokens(np.array([[1, 2, 3, 4, 5]]), codes, np.array([0]), config=cfg, item_weight=weight)
    logits = model(batch.tokens)

    def expect(eps: float) -> float:  # (1 - eps) x the target's loss + eps x the mean over the level's codes
        return sum(w * ((1 - eps) * -logp[codes[item, d]] - eps * logp.mean()).item()
                   for position, item, w in ((1, 2, 1.0), (3, 4, 2.0)) for d in range(3)
                   for logp in [F.log_softmax(logits[d][0, position], dim=-1)])

    for eps in (0.0, 0.2, 0.9):
        assert model.loss_sum(batch.tokens, batch.item_weight, smoothing=eps).item() == pytest.approx(expect(eps), rel=1e-6)
    assert abs(expect(0.9) - expect(0.0)) > 1e-3  # the settings differ measurably on this batch


def test_train_settings_added_later_leave_earlier_stage_keys_alone():
    """Stage keys hash a TrainConfig's str: a later setting at its default must not show
    there (the runs keyed before it stay valid), and must once it is set."""
    assert "label_smoothing" not in str(TrainConfig())
    assert str(TrainConfig()) == str(TrainConfig(label_smoothing=0.0))
    assert "label_smoothing=0.1" in str(TrainConfig(label_smoothing=0.1))
    assert TrainConfig(label_smoothing=0.1).model_dump()["label_smoothing"] == 0.1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=50), st.integers(1, 10_000))
def test_hash_user_in_range_and_type_stable(ids, buckets):
    arr = np.array(ids, dtype=np.int64)
    out = hash_user(arr, buckets)
    assert out.dtype == np.int64 and ((out >= 0) & (out < buckets)).all()
    assert hash_user(torch.from_numpy(arr), buckets).tolist() == out.tolist()


def test_hash_user_is_pinned():
    # splitmix64 reference values: a change here silently remaps every user bucket.
    assert hash_user(np.array([0, 1, 2, 12345]), 1 << 32).tolist() == [
        int(v) % (1 << 32) for v in (0xE220A8397B1DCDAF, 0x910A2DEC89025CC1, 0x975835DE1C9756CE, 0x22118258A9D111A0)
    ]
    with pytest.raises(FreshsidError):
        hash_user(np.array(["a"]), 10)


@pytest.mark.parametrize("seq_len", [1, 63, 84])
def test_flops_match_parameter_count(seq_len):
    cfg = tiny(width=32, ffn=48, n_heads=4)
    model = Retriever(cfg)
    matmul_weights = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    expect = 2 * matmul_weights + cfg.n_layers * 4 * seq_len * cfg.width + 2 * cfg.width * np.mean(SIZES)
    assert flops_per_token(cfg, seq_len) == pytest.approx(expect)


def test_checkpoint_roundtrip_and_shape_guard(tmp_path):
    torch.manual_seed(2)
    cfg, codes = tiny(), codes_table()
    model = Retriever(cfg).eval()
    manifest = save_checkpoint(tmp_path / "ckpt", model, extra_meta={"epochs": 3}, compute={"flops": 1.0}, seed=7)
    assert manifest.info["sid_shape_fingerprint"] == sid_shape_fingerprint(SIZES)
    assert read_manifest(tmp_path / "ckpt").config["codebook_sizes"] == list(SIZES)
    loaded, meta = load_checkpoint(tmp_path / "ckpt", expected_shape=SIZES)
    assert loaded.config == cfg and meta.info["epochs"] == 3 and meta.seed == 7
    batch = build_tokens(np.array([[1, 2, 3]]), codes, np.array([0]), config=cfg)
    for a, b in zip(model(batch.tokens), loaded(batch.tokens), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FreshsidError, match="SID shape"):
        load_checkpoint(tmp_path / "ckpt", expected_shape=(5, 4, 4))


def test_shape_fingerprint_agrees_with_sid_table():
    from freshsid.sid.table import SidTable

    table = SidTable(items=np.arange(2), codes=np.array([[0, 1, 0], [1, 0, 0]]), codebook_sizes=SIZES,
                     item_ids=np.arange(2))
    assert sid_shape_fingerprint(SIZES) == table.shape_fingerprint
    assert sid_shape_fingerprint(SIZES) != sid_shape_fingerprint((5, 4, 3, 2))
