"""The ``results`` dict an experiment saves (``results.json``), read: its policies in the
policy table's order, a policy's metric at a cutoff, the cutoffs a set of metrics holds.
What the report, its plots and the newcomer summary share."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from freshsid.policies import ABLATIONS, POLICIES

_METRIC_KEY = re.compile(r"^(recall|ndcg)@(\d+)$")


def finite(value: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_of(metrics: dict, metric: str, k: int) -> float | None:
    return finite((metrics or {}).get(f"{metric}@{k}"))


def ks_of(metrics_list: Iterable[dict], metric: str) -> list[int]:
    """Every K with a ``{metric}@K`` key in any of the dicts, sorted numerically."""
    found = set()
    for metrics in metrics_list:
        for key in metrics or {}:
            match = _METRIC_KEY.match(key)
            if match and match.group(1) == metric:
                found.add(int(match.group(2)))
    return sorted(found)


def policies_of(results: dict) -> dict[str, dict]:
    """The run's policies in the policy table's order (results.json sorts its keys), others after."""
    policies = results.get("policies") or {}
    order = {p.label: i for i, p in enumerate(POLICIES + ABLATIONS)}
    return {name: policies[name] or {} for name in sorted(policies, key=lambda n: order.get(n, len(order)))}
