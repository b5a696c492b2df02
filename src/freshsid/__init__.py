"""freshsid: keep collaborative Semantic IDs fresh for generative retrieval.

The public API, in the order of the pipeline::

    import freshsid

    logs = freshsid.load_dataset("synthetic")             # or a named dataset, a folder, a log file
    split = freshsid.TemporalSplit(logs, n_parts=10)       # the temporal protocol's parts
    base, gap = freshsid.Window(start=0, stop=8), freshsid.Window(start=8, stop=9)
    legacy = freshsid.CollabSidBuilder.from_config("tiny").fit(split, base)
    model = freshsid.GenerativeRetriever.from_config("tiny").fit(split, legacy.table_, window=base)
    fresh = legacy.recode(split, freshsid.Window(start=0, stop=9))   # aligned to legacy's vocabulary
    tuned = model.finetune(split, fresh.table_, window=gap)

Names are loaded on first use (PEP 562), so ``import freshsid`` costs no torch: the
command line's ``--help`` and a notebook's first cell stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_dataset": "freshsid.data.registry",
    "synthetic_dataset": "freshsid.data.registry",
    "LogSchema": "freshsid.data.logs",
    "Interactions": "freshsid.data.interactions",
    "SyntheticConfig": "freshsid.data.synthetic",
    "TemporalSplit": "freshsid.data.temporal",
    "Window": "freshsid.data.temporal",
    "ExperimentConfig": "freshsid.config",
    "preset": "freshsid.config",
    "RECIPES": "freshsid.recipes",
    "SidTable": "freshsid.sid.table",
    "CollabSidBuilder": "freshsid.api",
    "align": "freshsid.api",
    "code_items": "freshsid.api",
    "GenerativeRetriever": "freshsid.api",
    "Experiment": "freshsid.evaluate.experiment",
    "Release": "freshsid.serve.release",
    "Releases": "freshsid.serve.release",
    "refresh": "freshsid.serve.refresh",
    "FreshsidError": "freshsid.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from freshsid.api import CollabSidBuilder, GenerativeRetriever, align, code_items
    from freshsid.config import ExperimentConfig, preset
    from freshsid.recipes import RECIPES
    from freshsid.data.interactions import Interactions
    from freshsid.data.logs import LogSchema
    from freshsid.data.registry import load_dataset, synthetic_dataset
    from freshsid.data.synthetic import SyntheticConfig
    from freshsid.data.temporal import TemporalSplit, Window
    from freshsid.errors import FreshsidError
    from freshsid.evaluate.experiment import Experiment
    from freshsid.serve.refresh import refresh
    from freshsid.serve.release import Release, Releases
    from freshsid.sid.table import SidTable


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'freshsid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
