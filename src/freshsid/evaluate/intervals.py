"""Per-user scores and paired bootstrap intervals between policies.

Every evaluation of the experiment writes, beside its metrics, one row per test user
(:func:`user_scores`): Recall@K and nDCG@K on all of the user's labels, the same on
the labels that are base items only, and whether the user's history holds an item
first seen in the gap. Two policies scored on the same users can then be compared
user by user: :func:`paired_bootstrap` resamples the users (the same resampled users
on both sides), nested over builds when several runs are pooled (resample builds,
then users within each), and gives the mean difference with its percentile interval.

The nested bootstrap treats each build's users as a fresh sample; but every build scores
the same test users, so a user who favours one policy does so in every build. Pooled
builds therefore also get the *crossed* bootstrap (one user resample shared by every
build, builds resampled), the Student t interval over the build means (n_builds - 1
degrees of freedom; none with one build) and the sign count (builds whose difference is
above 0). :func:`verdict` calls a policy ahead or behind only when the crossed and the t
intervals both exclude 0.

With 2,000 users a policy's R@500 has a standard error near 0.008 (per-user standard
deviation ~0.35); pairing removes the part of that spread both policies share, which
is most of it, so differences of 0.005 become readable.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from freshsid.artifacts import write_bytes_atomic
from freshsid.data.temporal import Examples
from freshsid.errors import FreshsidError
from freshsid.metrics import per_user

RESAMPLES = 1000
LEVEL = 0.95
INTERVAL_KS = (100, 200, 500)  # the paper's high cutoffs; a run without them uses its three largest
HEAD_KS = (10,)  # and the head, where a run has it
BASE_LABELS = "base:"  # column prefix of the scores on base-item labels only


def user_scores(ranked: np.ndarray, examples: Examples, *, ks: tuple[int, ...], base_items: np.ndarray,
                new_items: np.ndarray) -> pl.DataFrame:
    """One row per user of ``examples`` (in its order): ``user``, ``labels``,
    ``history_new`` (the history holds one of ``new_items``), ``recall@K`` / ``ndcg@K`` and
    ``base:recall@K`` / ``base:ndcg@K`` on the labels in ``base_items`` only (NaN for a user
    with none). ``ranked``: (m, k) items, best first."""
    scores = per_user(ranked, examples.label_indptr, examples.label_items, ks)
    is_base = np.isin(examples.label_items, base_items)
    owner = np.repeat(np.arange(len(examples)), np.diff(examples.label_indptr))
    n_base = np.bincount(owner[is_base], minlength=len(examples))
    kept = np.flatnonzero(n_base > 0)
    columns = {"user": examples.users.astype(np.int64), "labels": np.diff(examples.label_indptr).astype(np.int64),
               "history_new": np.isin(examples.inputs, new_items).any(axis=1), **scores}
    if len(kept):
        indptr = np.concatenate([[0], np.cumsum(n_base[kept])]).astype(np.int64)
        base = per_user(ranked[kept], indptr, examples.label_items[is_base & np.isin(owner, kept)], ks)
    for key in scores:
        column = np.full(len(examples), np.nan)
        if len(kept):
            column[kept] = base[key]
        columns[BASE_LABELS + key] = column
    return pl.DataFrame(columns)


def write_scores(path: Path, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


def paired_bootstrap(builds: Sequence[tuple[np.ndarray, np.ndarray]], *, n_resamples: int = RESAMPLES, seed: int = 0,
                     level: float = LEVEL) -> dict[str, Any]:
    """Mean difference ``a - b`` and its intervals, paired over users.

    Args:
        builds: one ``(a, b)`` per build: (n_users,) per-user scores of the two policies on
            that build's test users, in the same user order. Builds of equal length are
            taken to score the same users in the same order (what the crossed interval needs).
        n_resamples: bootstrap resamples (>= 1,000 for a 95% interval worth reading).

    Returns one cell of :func:`compare`: the estimate (the mean over builds of each
    build's mean difference) with the nested, crossed and t intervals and the sign count.
    """
    diffs = [(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))[:, None] for a, b in builds]
    same_users = len({len(d) for d in diffs}) == 1
    return _cells(diffs, n_resamples=n_resamples, seed=seed, level=level, same_users=same_users)[0]


def _cells(diffs: Sequence[np.ndarray], *, n_resamples: int, seed: int, level: float, same_users: bool,
           resample_builds: bool = True) -> list[dict[str, Any]]:
    """The statistics of c comparisons at once: ``diffs`` holds one (n_b, c) per build;
    returns one dict per comparison.

    ``diff``, ``low``, ``high``: the estimate and the nested bootstrap (builds resampled,
    then users within each drawn build, independently); without ``resample_builds`` the
    builds are fixed strata (every resample takes each once, with its users resampled) and
    nothing else is given. With builds resampled, also: ``crossed_low`` / ``crossed_high``
    (None unless ``same_users``), ``t_low`` / ``t_high`` (None with one build) and
    ``positive``, the builds whose mean difference is above 0, of ``builds``.
    """
    if not diffs or any(len(d) == 0 for d in diffs):
        raise ValueError("every build needs at least one user")
    if n_resamples < 1:
        raise ValueError("n_resamples must be positive")
    means = np.stack([d.mean(axis=0) for d in diffs])  # (n_builds, c)
    est = means.mean(axis=0)
    low, high = _percentiles(_nested(diffs, n_resamples, seed, resample_builds), level)
    common = {"builds": len(diffs), "users": int(sum(len(d) for d in diffs)), "resamples": n_resamples}
    cells: list[dict[str, Any]] = [{"diff": float(est[c]), "low": float(low[c]), "high": float(high[c]), **common}
                                   for c in range(len(est))]
    if not resample_builds:
        return cells
    crossed: tuple[np.ndarray, np.ndarray] | None
    if len(diffs) == 1:  # the crossed bootstrap of one build is the nested one: resample its users
        crossed = low, high
    elif same_users:
        crossed = _percentiles(_crossed(diffs, n_resamples, seed), level)
    else:
        crossed = None
    t = t_interval(means, level=level)
    for c, cell in enumerate(cells):
        for name, bounds in (("crossed", crossed), ("t", t)):
            cell[f"{name}_low"], cell[f"{name}_high"] = ((None, None) if bounds is None
                                                         else (float(bounds[0][c]), float(bounds[1][c])))
        cell["positive"] = int((means[:, c] > 0).sum())
    return cells


def _nested(diffs: Sequence[np.ndarray], n_resamples: int, seed: int, resample_builds: bool) -> np.ndarray:
    """(n_resamples, c) resampled estimates: builds drawn with replacement (or each once),
    then, per drawn build, its users with replacement, afresh for every draw."""
    rng = np.random.default_rng(seed)
    n_builds = len(diffs)
    picks = (rng.integers(0, n_builds, size=(n_resamples, n_builds)) if resample_builds
             else np.tile(np.arange(n_builds), (n_resamples, 1)))
    total = np.zeros((n_resamples, diffs[0].shape[1]))
    for b, d in enumerate(diffs):
        times = (picks == b).sum(axis=1)  # how often each resample drew build b
        # Drawing the users of a build m times and summing the m means is one multinomial of
        # m * n draws, divided by n.
        counts = rng.multinomial(times * len(d), np.full(len(d), 1.0 / len(d)))
        total += counts @ d / len(d)
    return total / n_builds


def _crossed(diffs: Sequence[np.ndarray], n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, c) resampled estimates when every build scored the same users in the
    same order: one draw of the users per resample, shared by every build (a user's
    scores in two builds are not independent), and the builds drawn with replacement."""
    rng = np.random.default_rng(seed)
    n_builds, n_users = len(diffs), len(diffs[0])
    users = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_resamples).astype(np.float64)
    picks = rng.integers(0, n_builds, size=(n_resamples, n_builds))
    times = (picks[:, :, None] == np.arange(n_builds)).sum(axis=1)  # (n_resamples, n_builds): draws of each build
    # users: (n_resamples, n_users), how often each resample drew each user
    total = sum(times[:, b, None] * (users @ d) for b, d in enumerate(diffs))
    return total / (n_builds * n_users)


def _percentiles(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail], axis=0)
    return low, high


def t_interval(means: np.ndarray, *, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray] | None:
    """Student t interval (n_builds - 1 degrees of freedom) around the mean of build means.

    ``means``: (n_builds,) or (n_builds, c), each build's mean difference. Returns
    ``(low, high)`` shaped like one row, or None with one build (no spread to read).
    """
    means = np.asarray(means, dtype=np.float64)
    n = len(means)
    if n < 2:
        return None
    half = stats.t.ppf((1 + level) / 2, n - 1) * means.std(axis=0, ddof=1) / np.sqrt(n)
    centre = means.mean(axis=0)
    return centre - half, centre + half


def verdict(cell: dict[str, Any]) -> str:
    """``ahead`` or ``behind`` only when the crossed and the t intervals both exclude 0 on
    that side; otherwise ``level``, with the sign count and, where an interval is missing, why."""
    crossed, t = _bounds(cell, "crossed"), _bounds(cell, "t")
    if crossed and t:
        if crossed[0] > 0 and t[0] > 0:
            return "ahead"
        if crossed[1] < 0 and t[1] < 0:
            return "behind"
    why = [reason for reason, missing in (("builds scored different users: no crossed interval", crossed is None),
                                          ("one build: no t interval", t is None)) if missing]
    signs = f"{cell['positive']} of {cell['builds']} builds > 0" if "positive" in cell else "no sign count"
    return f"level ({'; '.join([*why, signs])})"


def _bounds(cell: dict[str, Any], name: str) -> tuple[float, float] | None:
    low, high = cell.get(f"{name}_low"), cell.get(f"{name}_high")
    return None if low is None or high is None else (low, high)


def interval_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """The cutoffs intervals are given at: 100, 200 and 500 where the run has them (else its
    three largest), and 10 where it has it."""
    high = tuple(k for k in INTERVAL_KS if k in ks) or tuple(sorted(ks))[-3:]
    return tuple(sorted({*high, *(k for k in HEAD_KS if k in ks)}))


def compare(builds: Sequence[dict[str, pl.DataFrame]], references: Sequence[str], ks: Sequence[int], *,
            n_resamples: int = RESAMPLES, seed: int = 0, resample_builds: bool = True
            ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Every policy against each reference present, at ``ks``, Recall and nDCG.

    ``builds``: per build, policy label -> its per-user scores (:func:`user_scores`, the
    same users in the same order for every policy of a build). A policy is compared on the
    builds that have both it and the reference. Every comparison over the same builds uses
    the same resampled builds and users. With ``resample_builds=False`` the builds are
    fixed strata, such as the rounds of a rolling run: the estimate is the mean over them of
    the mean difference, and only users are resampled, within each. Returns
    ``{reference: {policy: {"recall@100": cell, ...}}}``, a cell as :func:`_cells` gives it:
    ``diff``, ``low``, ``high`` (nested), and with builds resampled the crossed and t
    intervals and the sign count that :func:`verdict` reads.
    """
    keys = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    labels = list(dict.fromkeys(label for build in builds for label in build))
    pairs: dict[tuple[int, ...], list[tuple[str, str]]] = {}  # the builds a comparison uses -> its (reference, policy)
    for ref in references:
        for label in labels:
            both = tuple(i for i, build in enumerate(builds) if label in build and ref in build)
            if label != ref and both:
                for i in both:
                    if not np.array_equal(builds[i][label]["user"].to_numpy(), builds[i][ref]["user"].to_numpy()):
                        raise ValueError(f"{label} and {ref} were not scored on the same users")
                pairs.setdefault(both, []).append((ref, label))
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for used, compared in pairs.items():
        diffs = [np.hstack([builds[i][label].select(keys).to_numpy() - builds[i][ref].select(keys).to_numpy()
                            for ref, label in compared]) for i in used]
        users = [builds[i][compared[0][0]]["user"].to_numpy() for i in used]
        same_users = all(np.array_equal(u, users[0]) for u in users)
        cells = _cells(diffs, n_resamples=n_resamples, seed=seed, level=LEVEL, same_users=same_users,
                       resample_builds=resample_builds)
        for j, (ref, label) in enumerate(compared):
            out.setdefault(ref, {})[label] = dict(zip(keys, cells[j * len(keys):(j + 1) * len(keys)], strict=True))
    # in the order of the references, then of the policies
    return {ref: {label: out[ref][label] for label in labels if label in out.get(ref, {})} for ref in references
            if ref in out}


def read_scores(root: Path, policies: dict[str, dict]) -> dict[str, pl.DataFrame]:
    """Policy label -> its per-user scores (the mean over its fine-tuning seeds), from the
    ``per_user`` files the records of a run under ``root`` name (relative to ``root``)."""
    missing = [label for label, record in policies.items() if not record.get("per_user")]
    if missing:
        raise FreshsidError(f"{root} has no per-user scores for {', '.join(missing)} (a run made before they were "
                            "kept); rerun it with this version of freshsid to evaluate them again.")
    return {label: mean_over_seeds([pl.read_parquet(Path(root) / path) for path in record["per_user"]])
            for label, record in policies.items()}


def mean_over_seeds(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Per-user scores averaged over a policy's fine-tuning seeds (the same users each)."""
    if len(frames) == 1:
        return frames[0]
    first = frames[0]
    numeric = [c for c in first.columns if first[c].dtype.is_float()]
    mean = {c: np.mean([f[c].to_numpy() for f in frames], axis=0) for c in numeric}
    return first.with_columns(*(pl.Series(c, v) for c, v in mean.items()))


def sensitivity(frame: pl.DataFrame, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Mean Recall / nDCG at ``ks`` on three slices of the users: all, those whose history
    holds no item first seen in the gap, and on base-item labels only (users with one)."""
    keys = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    clean = frame.filter(~pl.col("history_new"))
    out = {"all": {"users": frame.height, **{k: float(frame[k].mean()) for k in keys}},
           "no gap item in history": {"users": clean.height,
                                      **{k: float(clean[k].mean()) if clean.height else float("nan") for k in keys}}}
    based = frame.filter(pl.col(BASE_LABELS + keys[0]).is_not_nan())
    out["base-item labels only"] = {"users": based.height, **{k: float(based[BASE_LABELS + k].mean())
                                                              if based.height else float("nan") for k in keys}}
    return out
