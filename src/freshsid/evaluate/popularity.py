"""The MostPop baseline: items ranked by how often they were consumed in a window."""

from __future__ import annotations

import numpy as np

from freshsid.data.temporal import TemporalSplit, Window


def most_popular(split: TemporalSplit, counted: Window, allowed: Window, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` items seen in ``allowed`` most counted in ``counted`` (ties by item index),
    and their counts."""
    counts = np.bincount(split.logs.item[split.events(counted)], minlength=split.logs.n_items)
    items = split.allowed_items(allowed)
    ranking = items[np.lexsort((items, -counts[items]))][:k]
    return ranking, counts[ranking]
