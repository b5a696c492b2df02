"""The demo, shrunk for the tests: a small synthetic catalog and a fast ``tiny`` preset.

One patch serves the CLI's ``demo`` and the public API alike, so a test can hold the
two against each other in seconds rather than minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import freshsid.config as config_module
import freshsid.data.registry as registry
from freshsid.config import SASRecConfig, TrainConfig
from freshsid.data.synthetic import SyntheticConfig

SMALL_SYNTHETIC = SyntheticConfig(n_users=300, n_items=160, n_events=6000, n_communities=6)
SMALL_TINY = {
    **config_module.PRESETS["tiny"],
    "sasrec": SASRecConfig(dim=16, max_epochs=2, valid_users=50, max_length=20),
    "fit": TrainConfig(epochs=1, batch_size=64, warmup_steps=2),
    "finetune": TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
    "max_eval_users": 100,
    "threads": 1,
    "policies": ("Base", "Refresh with remap"),
}


def shrink(mp: pytest.MonkeyPatch, work: Path) -> None:
    """Work in ``work`` with its own cache; ``synthetic`` and ``tiny`` are the small ones."""
    mp.chdir(work)
    mp.setenv("FRESHSID_CACHE", str(work / "cache"))
    mp.setattr(registry, "SyntheticConfig", lambda: SMALL_SYNTHETIC)
    mp.setitem(config_module.PRESETS, "tiny", SMALL_TINY)
