"""The paired bootstrap on answers known in advance, and the per-user scores it reads."""

import numpy as np
import polars as pl
import pytest

from freshsid.data.temporal import Examples
from freshsid.evaluate.intervals import compare, paired_bootstrap, sensitivity, t_interval, user_scores, verdict
from freshsid.metrics import recall_ndcg


def _scores(n, seed=0):
    # per-user R@K-like values: many zeros and ones, as real ones are
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.3, 0.35, n), 0, 1)


def test_identical_policies_give_an_interval_around_zero():
    a = _scores(2000)
    got = paired_bootstrap([(a, a.copy())], n_resamples=1000)
    assert got["diff"] == 0 and got["low"] <= 0 <= got["high"]
    assert got["resamples"] == 1000 and got["users"] == 2000


def test_a_constant_shift_is_found_and_excludes_zero():
    b = _scores(2000)
    got = paired_bootstrap([(b + 0.01, b)], n_resamples=1000)
    assert got["diff"] == pytest.approx(0.01)
    # excludes 0, centred on the shift (a constant has no spread, up to rounding)
    assert got["low"] > 0 and got["low"] == pytest.approx(0.01) and got["high"] == pytest.approx(0.01)
    assert (got["low"] + got["high"]) / 2 == pytest.approx(got["diff"])


def test_noise_the_pairing_does_not_remove_widens_the_interval_around_the_true_shift():
    rng = np.random.default_rng(1)
    b = _scores(3000, seed=2)
    a = b + 0.02 + rng.normal(0, 0.1, len(b))
    got = paired_bootstrap([(a, b)], n_resamples=1000)
    half = (got["high"] - got["low"]) / 2
    # the standard error of the mean difference is 0.1 / sqrt(3000) = 0.0018; 95% half width ~1.96 of it
    assert half == pytest.approx(1.96 * 0.1 / np.sqrt(3000), rel=0.2)
    assert got["low"] < 0.02 < got["high"] and got["low"] > 0
    # unpaired users (a and b independent) would not be a pairing: the same policy shuffled is not "equal"
    assert paired_bootstrap([(b, rng.permutation(b))])["high"] - paired_bootstrap([(b, b)])["high"] > 0


def test_nested_over_builds_averages_builds_and_widens_with_their_spread():
    b1, b2, b3 = _scores(1000, 3), _scores(1000, 4), _scores(1000, 5)
    same = paired_bootstrap([(b1 + 0.01, b1), (b2 + 0.01, b2), (b3 + 0.01, b3)])
    assert same["diff"] == pytest.approx(0.01) and same["builds"] == 3
    assert same["low"] == pytest.approx(0.01) and same["high"] == pytest.approx(0.01)
    spread = paired_bootstrap([(b1 + 0.00, b1), (b2 + 0.01, b2), (b3 + 0.05, b3)])
    assert spread["diff"] == pytest.approx(0.02)
    # builds resampled: the interval reaches towards the build means 0.00 and 0.05
    assert spread["low"] < 0.01 and spread["high"] > 0.035


def test_identical_policies_over_builds_contain_zero_in_every_interval_and_are_level():
    builds = [(b, b.copy()) for b in (_scores(800, 3), _scores(800, 4), _scores(800, 5))]
    got = paired_bootstrap(builds, n_resamples=200)
    for side in ("", "crossed_", "t_"):
        assert got[f"{side}low"] <= 0 <= got[f"{side}high"]
    assert got["positive"] == 0 and verdict(got) == "level (0 of 3 builds > 0)"


@pytest.mark.parametrize("shift, expected", [(0.01, "ahead"), (-0.01, "behind")])
def test_a_constant_shift_centres_the_crossed_and_t_intervals_on_it(shift, expected):
    builds = [(b + shift, b) for b in (_scores(800, 3), _scores(800, 4), _scores(800, 5))]
    got = paired_bootstrap(builds, n_resamples=200)
    for side in ("crossed_", "t_"):
        assert got[f"{side}low"] == pytest.approx(shift) and got[f"{side}high"] == pytest.approx(shift)
    assert got["positive"] == (3 if shift > 0 else 0) and verdict(got) == expected


def test_the_crossed_bootstrap_keeps_a_users_lean_across_builds():
    # the same users in every build and the same per-user difference each time: the builds
    # add nothing, so the crossed interval is one build's; the nested one treats them as
    # 3 x 1,000 independent users and comes out about sqrt(3) narrower
    rng = np.random.default_rng(6)
    b, d = _scores(1000, 7), rng.normal(0.01, 0.1, 1000)
    one = paired_bootstrap([(b + d, b)], n_resamples=400)
    three = paired_bootstrap([(b + d, b)] * 3, n_resamples=400)
    width = lambda cell, side="": cell[f"{side}high"] - cell[f"{side}low"]  # noqa: E731
    assert width(three, "crossed_") == pytest.approx(width(one), rel=0.15)
    assert width(three) == pytest.approx(width(one) / np.sqrt(3), rel=0.15)
    # builds identical: no spread between build means, the t interval is a point
    assert three["t_low"] == pytest.approx(three["t_high"])


def test_the_t_interval_is_students_over_build_means_and_undefined_for_one_build():
    means = np.array([0.01, 0.02, 0.06])
    low, high = t_interval(means)
    # mean 0.03, sd 0.0265, t(0.975, 2 dof) = 4.303
    assert (low + high) / 2 == pytest.approx(0.03)
    assert (high - low) / 2 == pytest.approx(4.303 * np.std(means, ddof=1) / np.sqrt(3), rel=1e-3)
    assert t_interval(means[:1]) is None
    one = paired_bootstrap([(_scores(500) + 0.05, _scores(500))], n_resamples=200)
    assert one["low"] > 0 and one["t_low"] is None
    assert verdict(one) == "level (one build: no t interval; 1 of 1 builds > 0)"


def test_fixed_strata_resample_users_only():
    # rounds of a rolling run: each round's difference is constant, so only resampling
    # the rounds themselves could make the interval wider than a point
    b1, b2, b3 = _scores(1000, 3), _scores(1000, 4), _scores(1000, 5)
    users = np.arange(1000)
    rounds = [{"ref": pl.DataFrame({"user": users, "recall@10": b}), "A": pl.DataFrame({"user": users, "recall@10": b + d})}
              for b, d in ((b1, 0.00), (b2, 0.01), (b3, 0.05))]
    rounds = [{k: f.with_columns(pl.col("recall@10").alias("ndcg@10")) for k, f in r.items()} for r in rounds]
    fixed = compare(rounds, ["ref"], (10,), resample_builds=False)["ref"]["A"]["recall@10"]
    assert fixed["diff"] == pytest.approx(0.02)
    assert fixed["low"] == pytest.approx(0.02) and fixed["high"] == pytest.approx(0.02)
    drawn = compare(rounds, ["ref"], (10,))["ref"]["A"]["recall@10"]
    assert drawn["high"] - drawn["low"] > 0.02
    # the same users in every round, so the crossed interval exists; two of three rounds
    # above 0 (the first is exactly 0), and builds this far apart leave the t interval around 0
    assert drawn["crossed_low"] is not None and drawn["positive"] == 2 and drawn["t_low"] < 0
    assert verdict(drawn) == "level (2 of 3 builds > 0)"
    assert "crossed_low" not in fixed
    moved = [{k: f.with_columns(pl.col("user") + 1) for k, f in r.items()} if i else r for i, r in enumerate(rounds)]
    apart = compare(moved, ["ref"], (10,))["ref"]["A"]["recall@10"]
    assert apart["crossed_low"] is None and verdict(apart).startswith("level (builds scored different users")

def test_compare_pairs_every_policy_with_each_reference_present():
    users = np.arange(500)
    frame = lambda shift: pl.DataFrame({"user": users, "recall@10": _scores(500) + shift,  # noqa: E731
                                        "ndcg@10": _scores(500) + shift})
    out = compare([{"FT-old": frame(0.0), "A": frame(0.1), "B": frame(0.0)}], ["FT-old", "FT-old+new"], (10,))
    assert set(out) == {"FT-old"} and set(out["FT-old"]) == {"A", "B"}
    assert out["FT-old"]["A"]["recall@10"]["diff"] == pytest.approx(0.1)
    assert out["FT-old"]["B"]["ndcg@10"]["low"] <= 0 <= out["FT-old"]["B"]["ndcg@10"]["high"]
    with pytest.raises(ValueError, match="same users"):
        compare([{"FT-old": frame(0.0), "A": frame(0.1).with_columns(pl.Series("user", users[::-1]))}], ["FT-old"], (10,))


def test_user_scores_average_to_the_metrics_and_split_base_labels():
    # user 0: labels {1 (base), 7 (new)}; user 1: {7}; user 2: {2, 3}
    ex = Examples(users=np.array([10, 11, 12]), inputs=np.array([[-1, 1], [7, 2], [3, 4]]),
                  label_indptr=np.array([0, 2, 3, 5]), label_items=np.array([1, 7, 7, 2, 3]))
    ranked = np.array([[7, 1, 5], [2, 7, 5], [9, 8, 2]])
    frame = user_scores(ranked, ex, ks=(1, 3), base_items=np.arange(6), new_items=np.array([7]))
    means = recall_ndcg(ranked, ex.label_indptr, ex.label_items, (1, 3))
    assert {k: frame[k].mean() for k in means} == pytest.approx(means)
    assert frame["history_new"].to_list() == [False, True, False]
    assert frame["base:recall@3"].to_numpy()[[0, 2]] == pytest.approx([1.0, 0.5])
    assert np.isnan(frame["base:recall@3"][1])  # no base label
    table = sensitivity(frame, (3,))
    assert table["no gap item in history"]["users"] == 2 and table["base-item labels only"]["users"] == 2
    assert table["base-item labels only"]["recall@3"] == pytest.approx(0.75)
