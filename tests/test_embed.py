"""Item embeddings: SASRec learns and is deterministic, the text encoder caches, the store round-trips."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conftest import reseal
from freshsid.data.interactions import from_arrays
from freshsid.embed import content
from freshsid.data.sequences import length_batches
from freshsid.embed.collab import SASRec, SASRecConfig, holdout_last
from freshsid.embed.sasrec import SASRecModel
from freshsid.embed.store import Embeddings, load_embedding_items, load_embeddings, load_model_state, save_embeddings
from freshsid.errors import FreshsidError
from freshsid.metrics import recall_ndcg

N_CHAINS, CHAIN = 6, 5  # items 0..29 form 6 cycles of 5; 30..33 only appear after training
TINY = SASRecConfig(dim=16, n_layers=1, n_heads=2, ffn_dim=32, max_length=8, dropout=0.0, batch_size=32,
                    learning_rate=1e-2, max_epochs=25, patience=3, valid_users=40, valid_metric="recall@1")


def chain_walk(rng: np.random.Generator, steps: int) -> list[int]:
    """A walk along one item cycle: chain c holds items c*CHAIN .. c*CHAIN + CHAIN - 1."""
    chain, start = rng.integers(N_CHAINS), rng.integers(CHAIN)
    return [int(chain * CHAIN + (start + s) % CHAIN) for s in range(steps)]


@pytest.fixture(scope="module")
def chain_logs():
    """300 users walking item cycles (training slice), then 20 events on never-seen items."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for u in range(300):
        walk = chain_walk(rng, int(rng.integers(4, 9)))
        users += [u] * len(walk)
        items += walk
        ts += list(range(u * 10, u * 10 + len(walk)))
    n_train = len(users)
    for j in range(20):
        users.append(j)
        items.append(30 + j % 4)
        ts.append(10_000 + j)
    return from_arrays(np.array(users), np.array(items), np.array(ts), name="chains"), slice(0, n_train)


@pytest.fixture(scope="module")
def fitted(chain_logs):
    torch.set_num_threads(1)
    logs, train = chain_logs
    return SASRec(TINY, seed=0, progress=False).fit(logs, train)


def dense(logs, raw_items):
    """Dense indices of raw item ids (the fixture's raw ids are 0..33)."""
    lookup = {int(raw): i for i, raw in enumerate(logs.item_ids)}
    return np.vectorize(lookup.__getitem__)(np.asarray(raw_items))


def test_sasrec_beats_popularity_on_held_out_next_items(chain_logs, fitted):
    logs, train = chain_logs
    rng = np.random.default_rng(1)
    walks = np.array([chain_walk(rng, 5) for _ in range(200)])
    inputs, labels = dense(logs, walks[:, :-1]), dense(logs, walks[:, -1])
    indptr = np.arange(len(labels) + 1)
    ours = recall_ndcg(fitted.recommend(inputs, 5), indptr, labels, ks=(1, 5))
    popular = np.argsort(-np.bincount(logs.item[train], minlength=logs.n_items), kind="stable")[:5]
    baseline = recall_ndcg(np.tile(popular, (len(labels), 1)), indptr, labels, ks=(1, 5))
    assert ours["recall@1"] > 0.8 > 0.2 > baseline["recall@1"]
    assert ours["recall@5"] > baseline["recall@5"] + 0.5


def test_sasrec_records_compute_and_stops_early(fitted):
    assert fitted.fit_seconds_ > 0 and fitted.flops_ > 0
    assert 1 <= fitted.best_epoch_ <= fitted.epochs_run_ <= TINY.max_epochs
    assert len(fitted.history_) == fitted.epochs_run_
    assert all(h["valid"] is not None for h in fitted.history_)


def test_sasrec_is_deterministic_given_a_seed(chain_logs, fitted):
    logs, train = chain_logs
    config = TINY.model_copy(update={"max_epochs": 2})
    a = SASRec(config, seed=3, progress=False).fit(logs, train).item_embeddings_
    b = SASRec(config, seed=3, progress=False).fit(logs, train).item_embeddings_
    c = SASRec(config, seed=4, progress=False).fit(logs, train).item_embeddings_
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_unseen_items_are_flagged_and_keep_their_init(chain_logs, fitted):
    logs, _ = chain_logs
    unseen = dense(logs, [30, 31, 32, 33])
    assert fitted.item_embeddings_.shape == (logs.n_items, TINY.dim)
    assert fitted.item_embeddings_.dtype == np.float32
    assert not fitted.trained_items_[unseen].any() and fitted.trained_items_.sum() == 30
    torch.manual_seed(fitted.seed)
    init = SASRecModel(logs.n_items, TINY).item_table.detach().numpy()
    np.testing.assert_array_equal(fitted.item_embeddings_[unseen], init[unseen])
    trained = np.flatnonzero(fitted.trained_items_)
    assert not np.allclose(fitted.item_embeddings_[trained], init[trained])


def test_recommend_respects_allowed_items_and_never_returns_padding(chain_logs, fitted):
    logs, _ = chain_logs
    inputs = np.full((4, 12), -1)  # longer than max_length, one empty history
    inputs[0, -3:] = [0, 1, 2]
    inputs[1, :] = np.arange(12)
    inputs[2, -1] = 33
    default = fitted.recommend(inputs, 40)
    assert set(default[:, :30].ravel()) <= set(np.flatnonzero(fitted.trained_items_))
    assert (default[:, 30:] == -1).all()  # only 30 trained items to rank
    allowed = np.array([3, 7, 11, 30, 31])
    ranked = fitted.recommend(inputs, 7, allowed_items=allowed)
    assert ranked.shape == (4, 7) and (ranked[:, 5:] == -1).all()
    for row in ranked[:, :5]:
        assert sorted(row) == sorted(allowed)  # each allowed item exactly once, no padding id
    with pytest.raises(FreshsidError):
        fitted.recommend(np.array([[0, logs.n_items]]), 3)
    with pytest.raises(FreshsidError):
        SASRec(TINY).recommend(inputs, 3)


def test_sampled_softmax_also_learns(chain_logs):
    logs, train = chain_logs
    config = TINY.model_copy(update={"loss": "sampled_softmax", "n_negatives": 8, "valid_users": 0, "max_epochs": 15})
    model = SASRec(config, seed=0, progress=False).fit(logs, train)
    assert model.epochs_run_ == 15 and model.history_[-1]["loss"] < model.history_[0]["loss"] - 0.5


def test_config_refuses_unknown_keys_and_bad_heads():
    with pytest.raises(ValidationError):
        SASRecConfig(dims=64)
    with pytest.raises(ValidationError):
        SASRecConfig(dim=64, n_heads=3)
    with pytest.raises(ValidationError):
        SASRecConfig(valid_metric="mrr@10")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=60), st.integers(1, 10), st.integers(0, 2**16))
def test_holdout_last_removes_each_chosen_users_last_event(users, n_users, seed):
    user = np.array(users)
    item = np.arange(len(user)) + 100
    keep, ex = holdout_last(user, item, n_users=n_users, length=4, rng=np.random.default_rng(seed))
    counts = np.bincount(user, minlength=7)
    assert len(ex) == min(n_users, int((counts >= 3).sum()))
    assert (~keep).sum() == len(ex) and (counts[ex.users] >= 3).all()
    for i, u in enumerate(ex.users):
        assert ex.labels(i).tolist() == [item[user == u][-1]]  # the user's last event
        history = item[(user == u) & keep][-4:]
        assert ex.inputs[i][ex.inputs[i] >= 0].tolist() == history.tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=300), st.integers(1, 16), st.integers(0, 2**16))
def test_length_batches_cover_every_row_once(lengths, batch_size, seed):
    batches = length_batches(np.array(lengths, dtype=np.int64), batch_size, np.random.default_rng(seed))
    rows = np.concatenate(batches) if batches else np.zeros(0, int)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)


# --- content encoder -------------------------------------------------------------------------

TEXTS = ["matte red lipstick, long lasting", "long-lasting red lipstick with a matte finish",
         "stainless steel garden hose nozzle", "moisturizing shampoo for dry hair", ""]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    cache = tmp_path_factory.mktemp("content")
    encoder = content.ContentEncoder(cache_dir=cache, batch_size=2, progress=False)
    return cache, encoder, encoder.encode(TEXTS)


def test_content_vectors_are_unit_norm_and_semantic(encoded):
    _, encoder, vectors = encoded
    assert vectors.shape == (5, content.DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 3] + 0.3
    assert encoder.n_encoded_ == 5


def test_content_cache_hits_without_loading_the_model(encoded, monkeypatch):
    cache, _, first = encoded
    calls = []
    original = content.ContentEncoder._encode_batch
    monkeypatch.setattr(content.ContentEncoder, "_encode_batch", lambda self, texts: calls.append(list(texts)) or original(self, texts))
    again = content.ContentEncoder(cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.encode(list(reversed(TEXTS))), first[::-1])
    assert calls == [] and again._model is None and again.n_encoded_ == 0
    mixed = again.encode([TEXTS[2], "a brand new text", "a brand new text"])
    assert calls == [["a brand new text"]] and again.n_encoded_ == 1  # only the new text, once
    np.testing.assert_array_equal(mixed[0], first[2])
    np.testing.assert_array_equal(mixed[1], mixed[2])


def test_content_cache_refuses_a_corrupted_shard(encoded, tmp_path):
    cache, _, _ = encoded
    folder = tmp_path / content.model_tag()
    folder.mkdir()
    np.savez(folder / "shard-bad.npz", keys=np.zeros((2, 32), np.uint8), vectors=np.zeros((3, content.DIM)))
    with pytest.raises(FreshsidError, match="delete it"):
        content.ContentEncoder(cache_dir=tmp_path, progress=False).encode(["x"])


def test_content_embeddings_follow_item_text(encoded):
    cache, _, first = encoded
    items = pl.DataFrame({"item_id": [7, 8], "title": ["matte red lipstick, long lasting", "moisturizing shampoo for dry hair"]})
    logs = from_arrays(np.array([0, 0]), np.array([8, 7]), np.array([1, 2]), items=items)
    vectors = content.content_embeddings(logs, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(vectors, first[[3, 0]])  # dense item 0 is raw item 8


# --- store ----------------------------------------------------------------------------------------


def test_store_round_trip(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(6, 4))
    manifest = save_embeddings(tmp_path / "emb", vectors, kind="collab", config=TINY.model_dump(), seed=0,
                               inputs={"logs": "abc"}, compute={"seconds": 1.5}, window="0:8", items=[0, 2, 5])
    loaded, read = load_embeddings(tmp_path / "emb")
    np.testing.assert_array_equal(loaded, vectors.astype(np.float32))
    assert read.kind == "embeddings" and read.fingerprint == manifest.fingerprint
    environment = read.info.pop("environment")
    assert read.info == {"embedding": "collab", "window": "0:8", "n_items": 6, "dim": 4, "n_covered": 3}
    assert environment["torch"] == __import__("torch").__version__ and environment["torch_threads"] >= 1
    assert read.config["dim"] == 16 and read.inputs == {"logs": "abc"}
    assert load_embedding_items(tmp_path / "emb").tolist() == [0, 2, 5]


def test_store_refuses_tampered_files(tmp_path):
    out = tmp_path / "emb"
    save_embeddings(out, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="")
    np.save(out / "embeddings.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(FreshsidError, match="hash"):
        load_embeddings(out)
    save_embeddings(out, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["info"]["dim"] = 5
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FreshsidError, match="its own digest"):
        load_embeddings(out)
    # one that also recomputes the digest (it is a checksum, not a signature) meets the shape check
    reseal(out, lambda m: m["info"].update(dim=5))
    with pytest.raises(FreshsidError, match="manifest says"):
        load_embeddings(out)
    # a manifest that drops the vectors' entry, or lists a file outside the folder, is refused
    save_embeddings(out, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="")
    reseal(out, lambda m: m["files"].pop("embeddings.npy"))
    with pytest.raises(FreshsidError, match="does not list embeddings.npy"):
        load_embeddings(out)
    save_embeddings(out, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="")
    reseal(out, lambda m: m["files"].update({"../../etc/hostname": "0" * 64}))
    with pytest.raises(FreshsidError, match="not a file of the folder itself"):
        load_embeddings(out)
    with pytest.raises(FreshsidError, match="sorted"):
        save_embeddings(out, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="",
                        items=[2, 1])


def test_warm_start_continues_from_the_given_weights(chain_logs, fitted, tmp_path):
    logs, train = chain_logs
    config = TINY.model_copy(update={"max_epochs": 1})
    state = fitted.state()
    init = fitted.item_embeddings_
    warm = SASRec(config, seed=5, progress=False, init_state=state).fit(logs, train)
    cold = SASRec(config, seed=5, progress=False).fit(logs, train)
    # one epoch moves the rows a little: the warm table stays far closer to its start
    assert np.linalg.norm(warm.item_embeddings_ - init) < 0.5 * np.linalg.norm(cold.item_embeddings_ - init)
    unseen = ~warm.trained_items_
    np.testing.assert_array_equal(warm.item_embeddings_[unseen], init[unseen])
    assert warm.get_params()["init_state"] is not None and cold.get_params()["init_state"] is None
    # the weights travel with the embeddings artifact
    emb = Embeddings(fitted.item_embeddings_, np.flatnonzero(fitted.trained_items_), "collab", {}, 0, {}, "0:1",
                     state=state)
    emb.save(tmp_path / "emb", "logs")
    loaded = load_model_state(tmp_path / "emb")
    assert loaded.keys() == state.keys() and all(np.array_equal(loaded[k], state[k]) for k in state)
    smaller = SASRec(config.model_copy(update={"dim": 8}), progress=False).fit(logs, train)
    # the recorded warm start names the weights: other weights, another fingerprint
    assert SASRec(config, init_state=smaller.state()).get_params()["init_state"] != warm.get_params()["init_state"]
    with pytest.raises(FreshsidError, match="warm-start weights"):
        SASRec(config, progress=False, init_state=smaller.state()).fit(logs, train)
    content = tmp_path / "content"
    save_embeddings(content, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="")
    with pytest.raises(FreshsidError, match="no model weights"):
        load_model_state(content)


def test_warm_start_on_logs_appended_to_carries_the_fitted_item_rows(chain_logs, fitted):
    """Logs appended to since the weights were fitted hold new items, whose dense ids come
    after the old ones: the fitted rows carry over and the new items keep initial rows. A
    table larger than the model's is still refused."""
    logs, train = chain_logs
    earlier = from_arrays(logs.user_ids[logs.user[train]], logs.item_ids[logs.item[train]], logs.ts[train], name="early")
    assert earlier.n_items < logs.n_items and (earlier.item_ids == logs.item_ids[: earlier.n_items]).all()
    config = TINY.model_copy(update={"max_epochs": 1})
    old = SASRec(config, progress=False).fit(earlier, slice(0, earlier.n_events))
    emb = Embeddings(old.item_embeddings_, np.flatnonzero(old.trained_items_), "collab", config.model_dump(), 0, {}, "0:1",
                     state=old.state())
    grown = SASRec.restore(emb, logs.n_items).model_
    rows = grown.item_table.detach().numpy()
    np.testing.assert_array_equal(rows[: earlier.n_items], old.item_embeddings_)
    assert (np.abs(rows[earlier.n_items:]).sum(axis=1) > 0).all()  # the new items' initial rows
    assert not grown.item.weight[grown.pad].detach().any()  # the padding row, last
    full = Embeddings(fitted.item_embeddings_, np.flatnonzero(fitted.trained_items_), "collab", TINY.model_dump(), 0, {},
                      "0:1", state=fitted.state())
    with pytest.raises(FreshsidError, match="warm-start weights"):
        SASRec.restore(full, earlier.n_items)


def test_last_events_keeps_each_users_last_n_in_time_order():
    from freshsid.embed.collab import last_events

    user = np.array([0, 1, 0, 0, 2, 1, 0])
    np.testing.assert_array_equal(last_events(user, 2), [False, True, False, True, True, True, True])
    assert last_events(user, 10).all() and not last_events(user, 0).any()


def test_bce_on_last_sequences_trains_and_flags_its_items(chain_logs):
    logs, train = chain_logs
    config = TINY.model_copy(update={"loss": "bce", "sequences": "last", "max_epochs": 2, "valid_users": 0})
    model = SASRec(config, seed=0, progress=False).fit(logs, train)
    assert np.isfinite([h["loss"] for h in model.history_]).all() and model.epochs_run_ == 2
    assert model.trained_items_.any() and model.flops_ > 0


def test_a_version_1_manifest_without_digest_still_loads(tmp_path):
    """Artifacts written before manifests carried a digest stay readable (their files are still checked)."""
    out = tmp_path / "emb"
    save_embeddings(out, np.ones((3, 2)), kind="content", config={}, seed=None, inputs={}, compute={}, window="")
    data = json.loads((out / "manifest.json").read_text())
    data.pop("digest")
    data["schema_version"] = 1
    (out / "manifest.json").write_text(json.dumps(data))
    vectors, manifest = load_embeddings(out)
    assert manifest.schema_version == 1 and vectors.shape == (3, 2)
    np.save(out / "embeddings.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(FreshsidError, match="hash"):
        load_embeddings(out)
