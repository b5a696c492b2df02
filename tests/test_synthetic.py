"""The synthetic drifting catalog: determinism, shape, time order, and that the drift is real."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from freshsid.data.synthetic import (
    SyntheticConfig,
    _day_counts,
    _sample_in_groups,
    _sticky_communities,
    ground_truth,
    iter_synthetic_events,
    synthetic_items,
    write_synthetic,
)

SMALL = SyntheticConfig(n_users=400, n_items=300, n_events=12_000, n_communities=8, span_days=120, chunk_events=1_000)


def events(cfg: SyntheticConfig) -> pl.DataFrame:
    return pl.concat(list(iter_synthetic_events(cfg)))


def with_prev_community(cfg: SyntheticConfig) -> pl.DataFrame:
    """Events with the item's latent community *at event time* and that of the user's previous event."""
    truth = ground_truth(cfg).with_columns(pl.col("migration_timestamp").fill_null(np.iinfo(np.int64).max))
    return (
        events(cfg)
        .with_row_index("row")
        .join(truth, on="item_id")
        .sort("row")
        .with_columns(
            pl.when(pl.col("timestamp") >= pl.col("migration_timestamp"))
            .then(pl.col("end_community"))
            .otherwise(pl.col("birth_community"))
            .alias("community")
        )
        .with_columns(pl.col("community").shift(1).over("user_id").alias("prev_community"))
    )


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_config_gives_identical_files_and_another_seed_differs(tmp_path):
    a = write_synthetic(SMALL, tmp_path / "a")
    b = write_synthetic(SMALL, tmp_path / "b")
    c = write_synthetic(SMALL.model_copy(update={"seed": 1}), tmp_path / "c")
    assert sha(a.interactions) == sha(b.interactions) and sha(a.items) == sha(b.items)
    assert sha(a.interactions) != sha(c.interactions)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["interactions.parquet", "items.parquet"]


def test_files_have_schema_one_row_group_per_chunk_and_match_the_iterator(tmp_path):
    files = write_synthetic(SMALL, tmp_path)
    chunks = list(iter_synthetic_events(SMALL))
    meta = pq.ParquetFile(files.interactions).metadata
    assert meta.num_row_groups == len(chunks) > 1
    written = pl.read_parquet(files.interactions)
    assert written.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64})
    assert written.equals(pl.concat(chunks))
    items = pl.read_parquet(files.items)
    assert items.schema == pl.Schema({"item_id": pl.Int64, "title": pl.String, "categories": pl.String, "brand": pl.String})
    assert items.equals(synthetic_items(SMALL))


def test_events_are_time_sorted_day_resolution_and_reference_existing_items():
    ev = events(SMALL)
    assert ev.height == SMALL.n_events
    ts = ev["timestamp"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert np.all((ts - SMALL.start_timestamp) % 86_400 == 0)
    assert ts.max() < SMALL.start_timestamp + SMALL.span_days * 86_400
    items = synthetic_items(SMALL)
    assert items["item_id"].is_unique().all() and items.height == SMALL.n_items
    assert ev["item_id"].is_in(items["item_id"].implode()).all()
    assert ev["user_id"].min() >= 0 and ev["user_id"].max() < SMALL.n_users
    assert items.select(pl.col("title", "categories", "brand").str.len_chars().min()).row(0) > (0, 0, 0)


@pytest.mark.parametrize("chunk_events", [1, 777, 10**9])
def test_output_does_not_depend_on_chunk_size(chunk_events):
    reference = events(SMALL.model_copy(update={"chunk_events": 5_000}))
    chunks = list(iter_synthetic_events(SMALL.model_copy(update={"chunk_events": chunk_events})))
    assert pl.concat(chunks).equals(reference)
    # Each chunk is a slice of time: whole days, never split across chunks.
    days = [set(c["timestamp"].unique().to_list()) for c in chunks]
    assert all(a.isdisjoint(b) for a, b in zip(days, days[1:]))
    assert all(c.height >= chunk_events for c in chunks[:-1])


def test_migrating_items_change_their_co_consumed_community():
    # Items born on day 0 are followed through their migration: most of the catalog here.
    cfg = SMALL.model_copy(update={"migrating_share": 0.4, "n_events": 20_000, "new_item_share": 0.2})
    truth = ground_truth(cfg)
    migrants = truth.filter(pl.col("migration_timestamp").is_not_null() & (pl.col("birth_timestamp") == cfg.start_timestamp))
    assert migrants.height > 0.2 * cfg.n_items
    assert (migrants["birth_community"] != migrants["end_community"]).all()
    ev = with_prev_community(cfg)
    tenth = cfg.n_events // 10

    def agreement(window: pl.DataFrame) -> tuple[float, float]:
        """Share of a migrant's events whose previous same-user event was in its birth / end community."""
        w = window.join(migrants.select("item_id"), on="item_id").drop_nulls("prev_community")
        return (w["prev_community"] == w["birth_community"]).mean(), (w["prev_community"] == w["end_community"]).mean()

    early_birth, early_end = agreement(ev.head(tenth))
    late_birth, late_end = agreement(ev.tail(tenth))
    assert early_birth > 0.6 and early_end < 0.2
    assert late_end > 0.6 and late_birth < 0.2


def test_without_drift_the_co_consumption_stays_put():
    cfg = SMALL.model_copy(update={"migrating_share": 0.0})
    truth = ground_truth(cfg)
    assert truth["migration_timestamp"].null_count() == cfg.n_items
    assert (truth["birth_community"] == truth["end_community"]).all()
    late = with_prev_community(cfg).tail(cfg.n_events // 10).drop_nulls("prev_community")
    assert (late["prev_community"] == late["birth_community"]).mean() > 0.8


def test_user_taste_drift_moves_user_interests():
    def mean_shift(user_drift_share: float) -> float:
        """Mean total-variation distance between a user's community mix in the first and second half."""
        cfg = SMALL.model_copy(update={"user_drift_share": user_drift_share, "migrating_share": 0.0, "stickiness": 0.0})
        ev = with_prev_community(cfg).with_columns((pl.col("row") >= cfg.n_events // 2).alias("late"))
        mix = ev.group_by("user_id", "late", "community").len().with_columns(
            (pl.col("len") / pl.col("len").sum().over("user_id", "late")).alias("p")
        )
        active = ev.group_by("user_id", "late").len().group_by("user_id").agg(pl.col("len").min()).filter(pl.col("len") >= 15)
        wide = mix.join(active.select("user_id"), on="user_id").pivot("late", index=["user_id", "community"], values="p")
        wide = wide.fill_null(0.0)
        return wide.group_by("user_id").agg(((pl.col("false") - pl.col("true")).abs().sum() / 2))["false"].mean()

    assert mean_shift(1.0) > mean_shift(0.0) + 0.15


def test_seasonal_amplitude_makes_item_popularity_oscillate():
    def mean_cv(amplitude: float) -> float:
        """Mean coefficient of variation of an item's 15-day counts (popular items only)."""
        update = {"seasonal_amplitude": amplitude, "seasonal_period_days": 60.0, "migrating_share": 0.0}
        cfg = SMALL.model_copy(update={**update, "new_item_share": 0.0, "n_events": 30_000})
        bucket = ((pl.col("timestamp") - cfg.start_timestamp) // (15 * 86_400)).alias("bucket")
        counts = events(cfg).with_columns(bucket).group_by("item_id", "bucket").len()
        m = counts.pivot("bucket", index="item_id", values="len").fill_null(0).drop("item_id").to_numpy()
        m = m[m.sum(axis=1) >= 100].astype(float)
        return float((m.std(axis=1) / m.mean(axis=1)).mean())

    assert mean_cv(1.0) > mean_cv(0.0) + 0.2


def test_some_items_appear_only_late_and_never_before_birth():
    ev = events(SMALL).join(ground_truth(SMALL), on="item_id")
    assert (ev["timestamp"] >= ev["birth_timestamp"]).all()
    first_seen = ev.group_by("item_id").agg(pl.col("timestamp").min())
    half = SMALL.start_timestamp + SMALL.span_days // 2 * 86_400
    assert (first_seen["timestamp"] > half).sum() >= 0.05 * SMALL.n_items


def test_user_sequences_mostly_stay_in_one_community_and_stickiness_controls_it():
    def stay(stickiness: float) -> float:
        ev = with_prev_community(SMALL.model_copy(update={"stickiness": stickiness})).drop_nulls("prev_community")
        return (ev["prev_community"] == ev["community"]).mean()

    sticky, loose = stay(0.9), stay(0.0)
    assert sticky > 0.85 and loose < sticky - 0.2
    per_user = events(SMALL).group_by("user_id").len()["len"]
    assert per_user.median() >= 5 and per_user.max() > 5 * per_user.median()  # several events each, skewed


def test_titles_carry_the_birth_community():
    items = synthetic_items(SMALL).join(ground_truth(SMALL), on="item_id")
    assert items.group_by("birth_community").agg(pl.col("categories").n_unique())["categories"].max() == 1
    assert items["categories"].n_unique() == SMALL.n_communities
    words = [set(t.lower().split()) for t in items["title"]]
    comm = items["birth_community"].to_numpy()
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(words), (3_000, 2))
    overlap = np.array([len(words[i] & words[j]) for i, j in pairs])
    same = comm[pairs[:, 0]] == comm[pairs[:, 1]]
    assert overlap[same].mean() > overlap[~same].mean() + 0.3


def test_many_communities_and_tiny_catalogs_still_work():
    cfg = SyntheticConfig(n_users=5, n_items=2, n_events=50, n_communities=30, span_days=3, new_item_share=0.9)
    ev = events(cfg)
    assert ev.height == 50 and ev["item_id"].is_in([0, 1]).all()
    assert synthetic_items(SyntheticConfig(n_items=200, n_communities=30))["categories"].n_unique() > 20


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError):
        SyntheticConfig(n_itemz=10)
    with pytest.raises(ValidationError):
        SyntheticConfig(migrating_share=1.5)
    with pytest.raises(ValidationError):
        SyntheticConfig(n_communities=1)
    with pytest.raises(ValidationError):
        SMALL.n_items = 3  # frozen


def test_two_million_events_stream_in_day_bounded_chunks():
    """(Its speed is benchmarks/bench_data.py's: a timed assertion here fails on a busy machine.)"""
    cfg = SyntheticConfig(n_users=50_000, n_items=20_000, n_events=2_000_000, n_communities=100)
    per_day = -(-cfg.n_events // cfg.span_days)
    heights = [chunk.height for chunk in iter_synthetic_events(cfg)]
    assert sum(heights) == 2_000_000 and len(heights) > 1
    assert all(cfg.chunk_events <= h < cfg.chunk_events + per_day for h in heights[:-1])


# --- pure helpers, against brute force -----------------------------------------------------------


@given(st.integers(0, 10**7), st.integers(1, 2_000))
def test_day_counts_are_even_and_exact(n_events, n_days):
    counts = _day_counts(n_events, n_days)
    assert counts.shape == (n_days,) and counts.sum() == n_events
    assert counts.max() - counts.min() <= 1


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_sticky_communities_match_a_loop(data):
    n_users = data.draw(st.integers(1, 6))
    n = data.draw(st.integers(0, 40))
    users = np.array(data.draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)), np.int64)
    switch = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    fresh = np.array(data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), np.int32)
    state = np.array(data.draw(st.lists(st.integers(-1, 9), min_size=n_users, max_size=n_users)), np.int32)
    expected_state, expected = state.copy(), []
    for u, s, f in zip(users, switch, fresh):
        if s or expected_state[u] < 0:
            expected_state[u] = f
        expected.append(expected_state[u])
    got = _sticky_communities(users, switch, fresh, state)
    assert got.tolist() == expected and state.tolist() == expected_state.tolist()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_sample_in_groups_picks_a_positive_weight_in_the_group(data):
    sizes = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=6))
    weights = np.array(
        data.draw(st.lists(st.sampled_from([0.0, 0.0, 1e-9, 0.5, 1.0, 3.0]), min_size=sum(sizes), max_size=sum(sizes)))
    )
    if weights.sum() == 0:
        weights = np.append(weights, 1.0)
        sizes[-1] += 1
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    groups = np.array(data.draw(st.lists(st.integers(0, len(sizes) - 1), min_size=1, max_size=20)))
    u = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.3, 0.999999, np.nextafter(1.0, 0.0)]), min_size=groups.size, max_size=groups.size)))
    idx = _sample_in_groups(np.cumsum(weights), offsets, groups, u)
    assert np.all(weights[idx] > 0)
    has_weight = np.add.reduceat(np.append(weights, 0.0), offsets[:-1])[groups] > 0
    has_weight &= offsets[groups + 1] > offsets[groups]
    inside = (idx >= offsets[groups]) & (idx < offsets[groups + 1])
    assert np.all(inside[has_weight])


def test_sample_in_groups_follows_the_weights():
    weights = np.array([1.0, 3.0, 0.0, 2.0, 2.0])
    offsets = np.array([0, 3, 5])
    u = np.random.default_rng(0).random(40_000)
    idx = _sample_in_groups(np.cumsum(weights), offsets, np.zeros(u.size, np.int64), u)
    share = np.bincount(idx, minlength=5) / u.size
    np.testing.assert_allclose(share, [0.25, 0.75, 0, 0, 0], atol=0.01)


def test_shape_stats_count_what_they_say_on_a_log_small_enough_to_count_by_hand():
    from freshsid.data.interactions import from_arrays
    from freshsid.data.stats import shape_stats

    # 4 users, 20 events over 20 days; item "a" 10 times (and so repeats).
    users = ["u0", "u0", "u1", "u1", "u2", "u2", "u3", "u3", "u0", "u1"] * 2
    items = ["a", "b", "a", "c", "a", "d", "a", "e", "a", "f", "g", "a", "h", "a", "i", "a", "j", "a", "k", "a"]
    logs = from_arrays(np.array(users), np.array(items), np.arange(20) * 86_400)
    stats = shape_stats(logs, n_parts=2)
    assert (stats["users"], stats["items"], stats["events"]) == (4, 11, 20)
    assert stats["events_per_user_mean"] == 5 and stats["users_under_5_events"] == 0.5
    pairs = list(zip(users, items))
    assert stats["repeat_share"] == pytest.approx(1 - len(set(pairs)) / 20)
    assert stats["top_1pct_item_share"] == pytest.approx(10 / 20)  # the top item alone
    assert 0 < stats["item_gini"] < 1 and 0 <= stats["new_item_event_share"] <= 1
