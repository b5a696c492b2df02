import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.data.interactions import from_arrays
from freshsid.data.sequences import windows
from freshsid.config import ProtocolConfig
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.errors import FreshsidError


def make_logs(rng, n=200, users=15, items=30):
    return from_arrays(rng.integers(0, users, n), rng.integers(0, items, n) + 100, rng.integers(0, 50, n))


@settings(max_examples=50, deadline=None)
@given(st.integers(10, 500), st.integers(2, 12), st.integers(0, 10_000))
def test_parts_equal_count(n, parts, seed):
    rng = np.random.default_rng(seed)
    logs = make_logs(rng, n=max(n, parts))
    sizes = TemporalSplit(logs, parts).part_sizes()
    assert sizes.sum() == logs.n_events and sizes.max() - sizes.min() <= 1


def test_stable_time_order_keeps_file_order_on_ties():
    logs = from_arrays(np.array(["a", "a", "b", "a"]), np.array(["x", "y", "z", "w"]), np.array([5, 5, 1, 5]))
    assert list(logs.item_ids[logs.item]) == ["z", "x", "y", "w"]


def test_examples_match_brute_force():
    rng = np.random.default_rng(0)
    logs = make_logs(rng, n=400)
    split = TemporalSplit(logs, 10)
    test = Window(start=9, stop=10)
    ex = split.examples(test, max_history=5)
    cut = split.bounds[9]
    expected_users = sorted(
        u for u in set(logs.user[cut:].tolist()) if (logs.user[:cut] == u).any()
    )
    assert ex.users.tolist() == expected_users
    for i, u in enumerate(ex.users):
        hist = logs.item[:cut][logs.user[:cut] == u][-5:]
        row = ex.inputs[i]
        assert row[row >= 0].tolist() == hist.tolist()
        assert (row[: 5 - len(hist)] == -1).all()
        assert ex.labels(i).tolist() == sorted(set(logs.item[cut:][logs.user[cut:] == u].tolist()))


def test_new_items_and_allowed():
    rng = np.random.default_rng(1)
    logs = make_logs(rng, n=300)
    split = TemporalSplit(logs, 10)
    gap = Window(start=8, stop=9)
    new = split.new_items(gap)
    before = set(logs.item[: split.bounds[8]].tolist())
    assert all(i not in before for i in new)
    assert set(new) <= set(split.allowed_items(gap).tolist())


def test_bad_windows():
    with pytest.raises(FreshsidError):
        Window.parse("8:3")
    with pytest.raises(ValueError):
        ProtocolConfig(test=Window(start=5, stop=6))
    logs = make_logs(np.random.default_rng(2))
    with pytest.raises(FreshsidError):
        TemporalSplit(logs, 10).events(Window(start=0, stop=12))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=80), st.integers(2, 6), st.integers(0, 99))
def test_windows_predict_every_item_once(users, length, seed):
    users = np.array(users)
    items = np.random.default_rng(seed).integers(0, 1000, len(users))
    seqs = windows(users, items, length=length, min_items=2)
    for u in np.unique(users):
        mine = items[users == u]
        rows = seqs.items[seqs.users == u]
        targets = seqs.target[seqs.users == u]
        predicted = rows[targets].tolist()
        assert predicted == (mine[1:].tolist() if len(mine) >= 2 else [])
        for row, tgt in zip(rows, targets):
            real = row[row >= 0]
            # a window is a contiguous run of the user's items, padded on the left
            starts = [s for s in range(len(mine)) if mine[s : s + len(real)].tolist() == real.tolist()]
            assert starts and not tgt[row < 0].any()


def test_validation_split_is_every_window_one_part_earlier():
    val = ProtocolConfig().validation()
    assert (str(val.base), str(val.gap), str(val.test)) == ("0:7", "7:8", "8:9")
    assert str(val.window("base+gap")) == "0:8" and val.max_history == ProtocolConfig().max_history
    with pytest.raises(ValueError):
        ProtocolConfig(base=Window(start=0, stop=7))  # the gap must follow base


DAY = 86_400


def test_cuts_move_to_whole_days_when_timestamps_are_day_granular():
    # 10 events a day for 10 days, then one day of 13: the equal-count cut of 2 parts (at 56)
    # falls inside day 5 (events 50..59); it moves to the nearer day start, 60 (4 events away vs 6)
    days = np.concatenate([np.repeat(np.arange(10), 10), np.full(13, 10)])
    n = len(days)  # 113 events, equal-count cut at 56
    logs = from_arrays(np.arange(n) % 7, np.arange(n) % 11, 1_600_000_000 - 1_600_000_000 % DAY + days * DAY)
    split = TemporalSplit(logs, 2)
    assert split.bounds.tolist() == [0, 60, 113] and not split.equal_count
    cut = split.bounds[1]
    assert logs.ts[cut - 1] < logs.ts[cut]  # no day straddles the boundary
    # with one second added to every other event the data is not day-granular: cuts stay put
    jittered = from_arrays(np.arange(n) % 7, np.arange(n) % 11, logs.ts + np.arange(n) % 2)
    assert TemporalSplit(jittered, 2).bounds.tolist() == [0, 56, 113]
    # cuts already on day boundaries stay; a tie (5 events either way) goes to the day's start
    three = from_arrays(np.arange(30) % 5, np.arange(30) % 9, DAY * np.repeat(np.arange(3), 10))
    assert TemporalSplit(three, 3).bounds.tolist() == [0, 10, 20, 30]
    assert TemporalSplit(three, 2).bounds.tolist() == [0, 10, 30]  # cut at 15 in day 1 (10..19): 5 vs 5
    with pytest.raises(FreshsidError, match="too few days"):
        TemporalSplit(from_arrays(np.arange(30) % 5, np.arange(30) % 9, DAY * np.repeat(np.arange(2), 15)), 3)


def test_kcore_filters_only_the_events_before_the_test_part():
    from freshsid.data.temporal import kcore_before

    rng = np.random.default_rng(3)
    logs = make_logs(rng, n=600, users=40, items=60)
    split = TemporalSplit(logs, 10)
    test = Window(start=9, stop=10)
    core = kcore_before(split, test, 4)
    kept = core.bounds[9]
    users = np.bincount(core.logs.user[:kept], minlength=logs.n_users)
    items = np.bincount(core.logs.item[:kept], minlength=logs.n_items)
    assert (users[core.logs.user[:kept]] >= 4).all() and (items[core.logs.item[:kept]] >= 4).all()
    assert kept < split.bounds[9]  # something was filtered
    # the test part is untouched: the same events, in the same order
    for name in ("user", "item", "ts"):
        assert np.array_equal(getattr(core.logs, name)[kept:], getattr(logs, name)[split.bounds[9]:])
    # each part keeps its span of time
    assert core.logs.ts[core.bounds[5]] >= logs.ts[split.bounds[5]] and core.logs.ts[core.bounds[5] - 1] < logs.ts[split.bounds[5]] + 1
