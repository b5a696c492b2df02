"""Staleness diagnostics: how far refreshed SIDs drift from the legacy ones, and how
a retriever trained on old parts decays on the parts that follow."""

from __future__ import annotations

from typing import Any

from freshsid.data.temporal import TemporalSplit, Window
from freshsid.retriever.model import Retriever
from freshsid.retriever.pipeline import evaluate
from freshsid.sid.align import Method, align
from freshsid.sid.table import SidTable


def sid_churn(legacy: SidTable, refreshed: SidTable, *, method: Method = "hungarian") -> list[dict[str, Any]]:
    """Per level, the share of common items whose code changes under the refreshed
    tokenizer: raw (codes as the refit numbers them) and after alignment."""
    _, report = align(legacy, refreshed, method=method)
    return [
        {"level": lv["level"], "churn_raw": 1.0 - lv["kept_before"], "churn_aligned": 1.0 - lv["kept_after"]}
        for lv in report["levels"]
    ]


def recall_by_part(
    model: Retriever,
    table: SidTable,
    split: TemporalSplit,
    *,
    trained_on: Window,
    until: int | None = None,
    ks: tuple[int, ...],
    beam: int | None = None,
    max_users: int | None = None,
    known: dict[int, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """The retriever's metrics on each single part after its training window (up to part
    ``until``, exclusive; default: the last), decoding over the items it was trained on:
    the decay that stale SIDs cause. ``known``: metrics of some parts already computed
    with these very settings (an experiment's Base on its test part), not decoded again."""
    rows = []
    for part in range(trained_on.stop, split.n_parts if until is None else until):
        metrics = (known or {}).get(part) or evaluate(model, table, split, test=Window(start=part, stop=part + 1),
                                                      allowed=trained_on, ks=ks, beam=beam, max_users=max_users)
        rows.append({"part": part, **metrics})
    return rows
