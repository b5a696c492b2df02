"""The whole experiment, every policy, end to end on a tiny synthetic catalog (no stubs)."""

import json

import numpy as np
import pytest

from freshsid.data.registry import synthetic_dataset
from freshsid.data.synthetic import SyntheticConfig
from freshsid.embed.collab import SASRecConfig
from freshsid.evaluate.experiment import POLICIES, Experiment, preset
from freshsid.retriever.train import TrainConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    logs = synthetic_dataset(SyntheticConfig(n_users=300, n_items=160, n_events=6000, n_communities=6),
                             cache_dir=out / "cache")
    config = preset(
        "tiny",
        sasrec=SASRecConfig(dim=16, max_epochs=2, valid_users=50, max_length=20),
        fit=TrainConfig(epochs=1, batch_size=64, warmup_steps=2),
        finetune=TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
        beam=20,
        ks=(1, 10, 20),
        max_eval_users=100,
        threads=1,
    )
    experiment = Experiment(logs, config, out / "run", show_progress=False)
    experiment.log = lambda _: None
    return experiment, experiment.run()


def test_every_policy_is_scored_with_compute(run):
    _, results = run
    assert list(results["policies"]) == list(POLICIES)
    for name, record in results["policies"].items():
        assert set(record["metrics"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 10, 20)}
        assert all(0.0 <= v <= 1.0 for v in record["metrics"].values()), name
        assert record["compute"]["retriever_flops"] > 0
    full = results["policies"]["Full"]["compute"]["retriever_flops"]
    assert full > results["policies"]["FT-aligned (hungarian)"]["compute"]["retriever_flops"]
    # FT-aligned+new decodes with the same model as FT-aligned (hungarian), over more items
    assert results["policies"]["FT-aligned+new"]["allowed"] != results["policies"]["FT-aligned (hungarian)"]["allowed"]


def test_outputs_alignment_and_staleness(run):
    experiment, results = run
    out = experiment.out
    for name in ("results.json", "report.md", "recall_at_k.png", "quality_vs_compute.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["policies"].keys() == results["policies"].keys()
    for method in ("greedy", "hungarian"):
        levels = results["alignment"][method]["levels"]
        assert all(lv["kept_after"] >= lv["kept_before"] - 1e-12 for lv in levels) or method == "greedy"
    hung = sum(lv["matched"] for lv in results["alignment"]["hungarian"]["levels"])
    greedy = sum(lv["matched"] for lv in results["alignment"]["greedy"]["levels"])
    assert greedy <= hung
    assert [row["part"] for row in results["staleness"]["by_part"]] == [8, 9]
    assert set(results["baselines"]) == {"SASRec (base)", "SASRec (base+gap)"}


def test_rerun_resumes_from_the_cache(run):
    experiment, results = run
    built = []
    again = Experiment(experiment.logs, experiment.config, experiment.out, show_progress=False)
    again.log = built.append
    second = again.run()
    assert built == []  # every stage came from the cache
    for name in results["policies"]:
        first, cached = results["policies"][name]["metrics"], second["policies"][name]["metrics"]
        assert cached.keys() == first.keys() and np.allclose([cached[k] for k in first], list(first.values()))


def test_warm_refresh_with_seeds_reuses_the_legacy_stages_and_pairs_the_seeds(run, tmp_path):
    """A warm refresh over two fine-tuning seeds, started from a copy of the cold run: the
    legacy stages come from the cache; the refreshed ones continue from the legacy models."""
    import shutil

    experiment, cold = run
    shutil.copytree(experiment.out, tmp_path / "run")
    config = experiment.config.model_copy(update={"refresh": "warm", "finetune_seeds": (0, 1),
                                                  "policies": ("Base", "FT-old", "FT-aligned (hungarian)")})
    warm = Experiment(experiment.logs, config, tmp_path / "run", show_progress=False)
    built = []
    warm.log = built.append
    results = warm.run()
    stages = [line.split("] ")[1] for line in built]
    assert not {"embed/0-8", "sids/0-8", "models/base", "models/ft-old", "eval/base"} & set(stages)
    assert {"embed/0-9", "sids/0-9", "models/ft-old-seed1", "models/ft-aligned-hungarian-seed1"} <= set(stages)
    old = results["policies"]["FT-old"]
    assert old["seeds"] == [0, 1] and len(old["by_seed"]) == 2
    assert old["by_seed"][0] == cold["policies"]["FT-old"]["metrics"]  # seed 0 is the cached cold-run model
    for key, value in old["metrics"].items():
        assert value == pytest.approx(np.mean([m[key] for m in old["by_seed"]]))
    assert "seeds" not in results["policies"]["Base"]
    # the warm tokenizer started from the legacy one: alignment keeps more level-1 codes than the cold refresh
    kept = lambda r: r["alignment"]["hungarian"]["levels"][0]["kept_after"]  # noqa: E731
    assert kept(results) > kept(cold)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Paired over fine-tuning seeds" in report and "FT-aligned (hungarian)" in report.split("## Paired")[1]
