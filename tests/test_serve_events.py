"""Which events are new to a release: chosen by time against what it saw, never by position."""

import numpy as np
import pytest

from freshsid.data.interactions import from_arrays
from freshsid.errors import FreshsidError
from freshsid.serve.events import new_events, seen_record


def _log(rng, n, *, start=0, users=40, items=30, seconds=400):
    ts = np.sort(rng.integers(start, start + seconds, n))
    return rng.integers(0, users, n).astype(str), rng.integers(0, items, n).astype(str), ts


def _events(logs, span=slice(None)):
    """(user id, item id, second) of the events in ``span``, as a sorted list (a multiset)."""
    return sorted(zip(logs.user_ids[logs.user[span]].tolist(), logs.item_ids[logs.item[span]].tolist(),
                      logs.ts[span].tolist(), strict=True))


def test_logs_reloaded_without_duplicates_give_every_newer_event():
    """The issue's case: a release built on logs that kept duplicates; the same logs, longer,
    reloaded with duplicates dropped shift every position, and a position-based refresh
    skipped events. By time, every event after the release's last second is taken."""
    rng = np.random.default_rng(0)
    u, i, t = _log(rng, 3000)
    dup = rng.choice(3000, 300, replace=False)  # 300 exact duplicate events
    u, i, t = np.concatenate([u, u[dup]]), np.concatenate([i, i[dup]]), np.concatenate([t, t[dup]])
    with_dups = from_arrays(u, i, t)
    until = int(np.searchsorted(with_dups.ts, 250, side="left"))  # the release saw [0, 250)
    seen = seen_record(with_dups, until)

    distinct = sorted(set(zip(u.tolist(), i.tolist(), t.tolist())))
    du, di, dt = (np.array(c) for c in zip(*distinct, strict=True))
    reloaded = from_arrays(du, di, dt.astype(np.int64))
    assert reloaded.n_events < with_dups.n_events
    new = new_events(reloaded, seen, release_id="r0001")
    newer = sorted(e for e in distinct if e[2] > seen["until_time"])
    assert new.taken == len(newer) and _events(new.logs, slice(new.start, None)) == newer
    assert new.late == 0
    # what the position would have taken: fewer events (the ones it skipped are lost)
    assert reloaded.n_events - until < len(newer)


def test_a_last_second_cut_in_two_gives_its_unseen_events_in_any_file_order():
    rng = np.random.default_rng(1)
    u, i, t = _log(rng, 2000, seconds=50)  # many events a second
    logs = from_arrays(u, i, t)
    cut = int(np.searchsorted(logs.ts, 30, side="left")) + 7  # inside second 30
    seen = seen_record(logs, cut)
    assert seen["until_time"] == 30 and len(seen["last_second"]) >= 1
    shuffled = rng.permutation(len(u))  # the same events exported in another file order
    new = new_events(from_arrays(u[shuffled], i[shuffled], t[shuffled]), seen, release_id="r0001")
    assert bool(np.all(np.diff(new.logs.ts) >= 0)) and new.late == 0
    taken = _events(new.logs, slice(new.start, None))
    assert all(e[2] >= 30 for e in taken)
    unseen_in_cut = [e for e in _events(logs, slice(cut, None)) if e[2] == 30 and (e[0], e[1]) not in
                     {tuple(p) for p in seen["last_second"]}]
    assert taken == sorted(unseen_in_cut + [e for e in _events(logs) if e[2] > 30])


def test_late_events_are_counted_and_not_taken():
    rng = np.random.default_rng(2)
    u, i, t = _log(rng, 1000)
    logs = from_arrays(u, i, t)
    until = int(np.searchsorted(logs.ts, 200))
    seen = seen_record(logs, until)
    late = from_arrays(np.append(u, "late-user"), np.append(i, "0"), np.append(t, 5))
    new = new_events(late, seen, release_id="r0001")
    assert new.late == 1 and new.taken == logs.n_events - int(np.searchsorted(logs.ts, seen["until_time"], side="right"))
    assert "late-user" not in {e[0] for e in _events(new.logs, slice(new.start, None))}


@pytest.mark.parametrize("case", ["ends before", "lost an event", "lost a last-second event"])
def test_logs_that_contradict_the_release_are_refused(case):
    rng = np.random.default_rng(3)
    u, i, t = _log(rng, 1000)
    logs = from_arrays(u, i, t)
    until = int(np.searchsorted(logs.ts, 200))
    seen = seen_record(logs, until)
    if case == "ends before":
        keep, message = t < 150, "time goes backwards"
    elif case == "lost an event":
        keep, message = np.arange(len(t)) != int(np.argmin(t)), "the events it was trained on changed"
    else:
        last = np.flatnonzero(t == seen["until_time"])
        keep, message = ~np.isin(np.arange(len(t)), last), "lacks"
    with pytest.raises(FreshsidError, match=message):
        new_events(from_arrays(u[keep], i[keep], t[keep]), seen, release_id="r0001")


def test_a_release_without_the_record_falls_back_to_its_last_time():
    rng = np.random.default_rng(4)
    logs = from_arrays(*_log(rng, 500))
    new = new_events(logs, {"until_event": 100, "until_time": int(logs.ts[99])}, release_id="r0001")
    assert new.taken == int((logs.ts > logs.ts[99]).sum())


@pytest.mark.parametrize("late_on", ["the same day", "another day"])
def test_a_removed_event_balanced_by_a_late_one_is_refused_naming_the_day(late_on):
    """Counts alone saw nothing here: one trained-on event removed, one late event added."""
    rng = np.random.default_rng(5)
    u, i, t = _log(rng, 1000, seconds=20 * 86_400)
    logs = from_arrays(u, i, t)
    until = int(np.searchsorted(logs.ts, 15 * 86_400))
    seen = seen_record(logs, until)
    gone = int(np.argmin(t))  # the first event, on day 0
    late_at = t[gone] + 1 if late_on == "the same day" else 86_400 * 3 + 5
    keep = np.arange(len(t)) != gone
    edited = from_arrays(np.append(u[keep], "late-user"), np.append(i[keep], "0"), np.append(t[keep], late_at))
    with pytest.raises(FreshsidError, match="1970-01-01 that release r0001 saw"):
        new_events(edited, seen, release_id="r0001")
