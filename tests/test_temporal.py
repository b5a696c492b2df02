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
