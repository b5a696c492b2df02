"""Distillation from the legacy retriever (freshsid.retriever.distill): Base's per-level
code distributions mapped onto the refreshed codes."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.data.sequences import Sequences
from freshsid.retriever.distill import Teacher, mapped_targets, mass_map
from freshsid.retriever.model import build_tokens, hash_user
from test_remap import SIZES, model, table


def brute_force(probs: np.ndarray, legacy_codes: np.ndarray, refreshed_codes: np.ndarray, k_new: int) -> np.ndarray:
    """Base's mass on each legacy code shared equally among the items that carried it, each
    share on its item's refreshed code; codes no item carried drop out, the rest renormalised."""
    out = np.zeros((len(probs), k_new))
    for code in np.unique(legacy_codes):
        holders = np.flatnonzero(legacy_codes == code)
        for item in holders:
            out[:, refreshed_codes[item]] += probs[:, code] / len(holders)
    return out / out.sum(axis=1, keepdims=True)


def test_the_target_sums_to_one_per_level_and_maps_bases_mass_exactly():
    # legacy code 0 (items 0, 1) now splits over refreshed codes 3 and 1; legacy code 1
    # (item 2) went to 3; legacy code 2 (item 3) to 2; legacy code 3's only item (9) left,
    # so Base's mass on it has nowhere to go; item 7 is new
    legacy = table([0, 1, 2, 3, 9], [[0, 0, 0], [0, 1, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    refreshed = table([0, 1, 2, 3, 7], [[3, 0, 0], [1, 1, 0], [3, 2, 0], [2, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(mass_map(legacy, refreshed, 0), [[0, .5, 0, .5], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
    probs = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    for level in range(legacy.n_levels):
        target, ok = mapped_targets(probs, torch.as_tensor(mass_map(legacy, refreshed, level), dtype=torch.float32))
        assert ok.all()
        torch.testing.assert_close(target.sum(dim=1), torch.ones(6))
        common = [0, 1, 2, 3]
        expected = brute_force(probs.numpy().astype(np.float64), legacy.codes[common, level], refreshed.codes[common, level], 4)
        np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-7)
    # level 0 by hand: 3 takes half of code 0's mass and all of code 1's; code 3's mass is dropped
    first, _ = mapped_targets(probs, torch.as_tensor(mass_map(legacy, refreshed, 0), dtype=torch.float32))
    p = probs[0]
    torch.testing.assert_close(first[0], torch.stack([p[0] * 0, p[0] / 2, p[2], p[0] / 2 + p[1]]) / (1 - p[3]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12))
def test_any_remap_gives_distributions_that_carry_bases_mass(seed, n_items):
    rng = np.random.default_rng(seed)
    codes = lambda: np.column_stack([rng.integers(0, 4, (n_items, 2)), np.arange(n_items)])  # noqa: E731
    legacy, refreshed = table(np.arange(n_items), codes()), table(np.arange(n_items), codes())
    probs = torch.as_tensor(rng.dirichlet(np.ones(4), 5))
    for level in range(2):
        mapping = mass_map(legacy, refreshed, level)
        target, ok = mapped_targets(probs, torch.as_tensor(mapping))
        assert (target >= 0).all()
        torch.testing.assert_close(target[ok].sum(dim=1), torch.ones(int(ok.sum()), dtype=probs.dtype))
        np.testing.assert_allclose(target.numpy(), brute_force(probs.numpy(), legacy.codes[:, level],
                                                               refreshed.codes[:, level], 4), rtol=1e-9)


def test_the_teacher_reads_legacy_sids_skips_new_items_and_follows_the_students_order():
    legacy = table([0, 1, 2, 3], [[0, 0, 0], [1, 1, 0], [2, 2, 0], [3, 3, 0]])
    refreshed = table([0, 1, 2, 3, 4], [[1, 0, 0], [0, 1, 0], [3, 2, 0], [2, 3, 0], [0, 0, 1]])  # 4 is new
    base = model().eval()
    teacher = Teacher.of(model(), legacy, refreshed, n_items=5, weight=1.0)
    # one window: items 0, 1, 4 (new), 2; the last three carry loss; a second window, item 3 after 2
    seqs = Sequences(np.array([5, 6]), np.array([[0, 1, 4, 2], [-1, -1, 2, 3]]),
                     np.array([[False, True, True, True], [False, False, False, True]]))
    targets, has = teacher.targets(seqs, np.array([0, 1]), torch.device("cpu"))
    assert has.tolist() == [True, False, True, True]  # the student keeps 1, 4, 2, then 3
    assert (targets[0][1] == 0).all()
    # Base's own view of window 0 without the new item: items 0, 1, 2
    lookup = legacy.lookup_table(5)
    logits = base(build_tokens(np.array([[0, 1, 2]]), lookup, hash_user(np.array([5]), 4), config=base.config).tokens)
    for level in range(2):
        probs = torch.softmax(logits[level][0, [1, 2]], dim=-1)
        expected, _ = mapped_targets(probs, torch.as_tensor(mass_map(legacy, refreshed, level), dtype=torch.float32))
        torch.testing.assert_close(targets[level][[0, 2]], expected, rtol=1e-5, atol=1e-6)
        assert torch.allclose(targets[level][has].sum(dim=1), torch.ones(3))
    assert teacher.term(seqs, np.array([0, 1]), torch.device("cpu"), progress=1.0) is None  # annealed to 0 at the end
