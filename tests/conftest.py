import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# The suite runs on 2 shared cores and its tensors are tiny: OpenMP thread hand-off costs
# more than the math there, so every test process uses one intra-op thread.
torch.set_num_threads(1)

def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of everything under ``folders``: what a refused command
    must leave as it found it."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in Path(f).rglob("*")}


def reseal(folder: Path, change: Callable[[dict], object]) -> None:
    """Edit an artifact's manifest as a careful tamperer would: ``change`` it, then recompute its digest."""
    from freshsid.artifacts import Manifest

    data = json.loads((Path(folder) / "manifest.json").read_text())
    change(data)
    data["digest"] = Manifest.model_validate(data).expected_digest
    (Path(folder) / "manifest.json").write_text(json.dumps(data))


N_ITEMS, CODED = 50, 40  # a tiny release codes the first 40 items; histories also hold the others


@dataclass
class Tiny:
    """A releases root of tiny releases (an untrained model over a synthetic log) and what
    :meth:`create` writes another from."""

    releases: object  # freshsid.serve.release.Releases
    retriever: object  # freshsid.GenerativeRetriever
    logs: object

    def create(self, *, promote: bool = True) -> str:
        release_id = self.releases.create(self.retriever, self.logs, until_event=self.logs.n_events)
        if promote:
            self.releases.promote(release_id)
        return release_id


def make_tiny(root: Path, *, seed: int = 0, item_prefix: str = "", releases: int = 1) -> Tiny:
    """``releases`` tiny releases under ``root / "releases"``, each promoted in turn; the
    table codes CODED of the log's N_ITEMS items (ids ``item_prefix`` + a number)."""
    from freshsid.api import GenerativeRetriever
    from freshsid.data.interactions import from_arrays
    from freshsid.retriever.model import Retriever, RetrieverConfig, save_checkpoint
    from freshsid.serve.release import Releases
    from freshsid.sid.table import SidTable

    rng = np.random.default_rng(seed)
    n = 3000
    numbers = rng.integers(0, N_ITEMS, n)
    logs = from_arrays(rng.integers(0, 60, n).astype(str), np.char.add(item_prefix, numbers.astype(str)),
                       np.sort(rng.integers(0, 400 * 86_400, n)))
    order = np.argsort([int(i[len(item_prefix):]) for i in logs.item_ids])  # dense items in number order: 0..39 coded
    items = np.sort(order[:CODED])
    codes = np.array([[c // 16, (c // 4) % 4, c % 4] for c in range(CODED)], dtype=np.int32)
    table = SidTable(items=items, codes=codes, codebook_sizes=(4, 4, 4), item_ids=logs.item_ids[items])
    torch.manual_seed(seed)
    model = Retriever(RetrieverConfig(codebook_sizes=(4, 4, 4), width=16, n_layers=1, n_heads=2, ffn=32,
                                      user_buckets=8, max_history=8, dropout=0.0)).eval()
    save_checkpoint(root / "checkpoint", model)
    tiny = Tiny(Releases(root / "releases"), GenerativeRetriever.load(root / "checkpoint", table), logs)
    for _ in range(releases):
        tiny.create()
    return tiny


@pytest.fixture
def tiny(tmp_path):
    """A root of two tiny releases, r0001 then r0002 promoted (a rollback goes back to r0001)."""
    return make_tiny(tmp_path, releases=2)


@pytest.fixture(scope="session")
def tiny_factory():
    """:func:`make_tiny`, for fixtures of a wider scope than a test's."""
    return make_tiny
