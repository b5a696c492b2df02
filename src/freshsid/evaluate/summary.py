"""What a newcomer should see first in a run: staleness, the refresh, the references.

Three plain sentences built only from ``results.json``, whatever they say: how much Base
loses from the part after its training to the test part and how many SIDs a refit moves
(staleness); the product's refresh (with remap, gap items allowed) against the strongest
incremental coding, FT-old+new, with the paired interval when the run has one and the
verdict over builds (:func:`freshsid.evaluate.intervals.verdict`) when it has the
intervals that needs; and where the generative models stand against the dense SASRec and
the popularity baseline. A sentence whose policies the run lacks is left out.
"""

from __future__ import annotations

from freshsid.evaluate.intervals import verdict
from freshsid.evaluate.results import ks_of, metric_of, policies_of
from freshsid.policies import INCREMENTAL, POLICIES, ComputeKind

REFRESH = "Refresh with remap+new"  # the product's refresh, over the same items as FT-old+new
BASE, DENSE, POPULAR = "Base", "SASRec", "MostPop(gap)"
_GENERATIVE = [p.label for p in POLICIES if p.compute != ComputeKind.BASELINE]


def newcomer_summary(results: dict, ks: tuple[int, ...] | None = None) -> str:
    """Markdown bullets: staleness, the refresh against FT-old+new, the dense and popularity
    references, at Recall@K for the smallest and largest of ``ks`` (default: the run's three
    largest K); Base is held against MostPop(gap) at every K the run measured. Empty when the
    run has none of it."""
    policies = policies_of(results)
    recall = {name: p.get("metrics") or {} for name, p in policies.items()}
    ks = ks or tuple(ks_of(recall.values(), "recall")[-3:])
    if not ks:
        return ""
    lo, hi = min(ks), max(ks)

    def at(name: str, k: int) -> float | None:
        return metric_of(recall[name], "recall", k) if name in recall else None

    lines = [f"What this run shows (Recall@{lo} and Recall@{hi}, {_users(policies)} test users):"]
    lines += [line for line in (_staleness(results, hi), _refresh(results, at, lo, hi),
                                _references(at, ks_of(recall.values(), "recall"), lo, hi, list(recall))) if line]
    return "\n".join(lines if len(lines) > 1 else [])


def _users(policies: dict) -> str:
    users = {p.get("users") for p in policies.values() if p.get("users")}
    return f"{max(users):,}" if users else "the"


def _staleness(results: dict, k: int) -> str | None:
    staleness = results.get("staleness") or {}
    parts = [row for row in staleness.get("by_part") or [] if row.get(f"recall@{k}") is not None]
    if len(parts) < 2:
        return None
    first, last = parts[0], parts[-1]
    change = last[f"recall@{k}"] / first[f"recall@{k}"] - 1 if first[f"recall@{k}"] else None
    text = (f"- Staleness: Base, trained on parts {staleness.get('trained_on', '?')}, scores Recall@{k} "
            f"{first[f'recall@{k}']:.4f} on part {first['part']} and {last[f'recall@{k}']:.4f} on part {last['part']}"
            + (f" ({change:+.0%})" if change is not None else "") + ".")
    churn = next((row for row in staleness.get("churn") or [] if row.get("level") == 0), None)
    if churn:
        text += (f" Refitting the SIDs moves {churn['churn_raw']:.0%} of items' first code "
                 f"({churn['churn_aligned']:.0%} after alignment).")
    return text


def _refresh(results: dict, at, lo: int, hi: int) -> str | None:
    if at(REFRESH, hi) is None or at(INCREMENTAL.label, hi) is None:
        return None
    text = (f"- The refresh ({REFRESH}) against the strongest incremental coding ({INCREMENTAL.label}): "
            + "; ".join(f"Recall@{k} {at(REFRESH, k):.4f} vs {at(INCREMENTAL.label, k):.4f}" for k in (lo, hi)
                        if at(REFRESH, k) is not None and at(INCREMENTAL.label, k) is not None))
    cell = ((results.get("intervals") or {}).get(INCREMENTAL.label) or {}).get(REFRESH, {}).get(f"recall@{hi}")
    if cell:
        side = ("above 0" if cell["low"] > 0 else "below 0" if cell["high"] < 0 else "holding 0")
        text += (f". Paired over test users, the difference at Recall@{hi} is {cell['diff']:+.4f} "
                 f"[{cell['low']:+.4f}, {cell['high']:+.4f}] (95%, {side})")
        if "positive" in cell:  # a verdict needs the crossed and t intervals over builds (runs since they exist)
            text += f"; over builds the refresh is {verdict(cell)}"
    return text + "."


def _references(at, ks: list[int], lo: int, hi: int, names: list[str]) -> str | None:
    generative = [name for name in _GENERATIVE if name in names and at(name, lo) is not None]
    if not generative or (at(DENSE, lo) is None and at(POPULAR, lo) is None):
        return None
    best = max(generative, key=lambda name: at(name, lo))
    parts = [f"{name} {at(name, lo):.4f} / {at(name, hi):.4f}" for name in (DENSE, POPULAR, best)
             if at(name, lo) is not None and at(name, hi) is not None]
    text = f"- References at Recall@{lo} / @{hi}: " + ", ".join(parts) + f" (the best generative policy at @{lo})."
    if at(DENSE, lo):
        text += f" The best generative policy reaches {at(best, lo) / at(DENSE, lo):.0%} of the dense SASRec at @{lo}."
    if at(BASE, lo) is not None and at(POPULAR, lo) is not None:
        above = [k for k in ks if (b := at(BASE, k)) is not None and (m := at(POPULAR, k)) is not None and b > m]
        text += (" Base is above MostPop(gap) at every K." if len(above) == len(ks) else
                 f" Base is above MostPop(gap) at K = {', '.join(map(str, above))} only." if above else
                 " Base is not above MostPop(gap) at any K.")
    return text
