import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.metrics import DEFAULT_KS, recall_ndcg


def brute_force(ranked, labels, k):
    recalls, ndcgs = [], []
    for row, lab in zip(ranked, labels):
        top = [x for x in row[:k] if x >= 0]
        hits = [1 if x in lab else 0 for x in top]
        recalls.append(sum(hits) / min(len(lab), k))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(lab), k)))
        ndcgs.append(dcg / idcg)
    return np.mean(recalls), np.mean(ndcgs)


@st.composite
def rankings(draw):
    n_items = draw(st.integers(2, 30))
    m = draw(st.integers(1, 6))
    width = draw(st.integers(1, n_items))
    ranked, labels = [], []
    for _ in range(m):
        perm = draw(st.permutations(range(n_items)))
        row = list(perm[:width])
        pad = draw(st.integers(0, width - 1))
        row = row[: width - pad] + [-1] * pad
        ranked.append(row)
        labels.append(sorted(draw(st.sets(st.integers(0, n_items - 1), min_size=1, max_size=n_items))))
    return np.array(ranked), labels


def csr(labels):
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in labels])])
    return indptr, np.concatenate([np.array(x) for x in labels])


@settings(max_examples=200, deadline=None)
@given(rankings(), st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True))
def test_matches_brute_force_and_bounded(data, ks):
    ranked, labels = data
    ks = tuple(sorted(ks))
    got = recall_ndcg(ranked, *csr(labels), ks=ks)
    # hits / min(|labels|, K) is non-decreasing once K >= every |labels| (below that the
    # denominator grows with K, so e.g. 1 hit of 2 labels gives recall@1 = 1, recall@2 = 0.5).
    longest = max(len(x) for x in labels)
    prev = 0.0
    for k in ks:
        r, n = brute_force(ranked, labels, k)
        assert 0.0 <= got[f"recall@{k}"] <= 1.0 and 0.0 <= got[f"ndcg@{k}"] <= 1.0 + 1e-12
        assert math.isclose(got[f"recall@{k}"], r, abs_tol=1e-12)
        assert math.isclose(got[f"ndcg@{k}"], n, abs_tol=1e-12)
        if k >= longest:
            assert got[f"recall@{k}"] >= prev - 1e-12
            prev = got[f"recall@{k}"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sets(st.integers(0, 49), min_size=1, max_size=20), min_size=1, max_size=5))
def test_perfect_ranking_scores_one(labels):
    labels = [sorted(x) for x in labels]
    ranked = np.full((len(labels), 50), -1)
    for i, lab in enumerate(labels):
        rest = [x for x in range(50) if x not in lab]
        ranked[i] = lab + rest
    got = recall_ndcg(ranked, *csr(labels), ks=DEFAULT_KS)
    assert all(math.isclose(v, 1.0) for v in got.values())


def test_known_values():
    ranked = np.array([[3, 1, 2], [0, 5, -1]])
    labels = [[1], [7, 8]]
    got = recall_ndcg(ranked, *csr(labels), ks=(1, 2))
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == 0.5  # user 0 hits 1 of min(1, 2) = 1; user 1 none
    assert math.isclose(got["ndcg@2"], 0.5 * (1 / math.log2(3)))
