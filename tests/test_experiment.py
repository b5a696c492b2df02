"""The whole experiment, every policy, end to end on a tiny synthetic catalog (no stubs).

The policy check reads only what the run wrote (results.json, stages' manifests) and
holds it against the definitions of DESIGN.md, written out here independently of
``freshsid.policies``: a runner that trains a model on the wrong window, from
the wrong start or over the wrong table fails it, whatever its code meant to do.
"""

import json
import shutil

import numpy as np
import pytest

import freshsid.evaluate.experiment as experiment_module
from freshsid.artifacts import read_manifest
from freshsid.config import RECIPES, SASRecConfig, TrainConfig, preset
from freshsid.data.registry import synthetic_dataset
from freshsid.data.synthetic import SyntheticConfig
from freshsid.data.temporal import Window
from freshsid.evaluate.experiment import Experiment
from freshsid.policies import ABLATIONS, POLICIES, ModelSpec, Policy, Tokenizer
from freshsid.sid.table import SidTable

# DESIGN.md, "Policies compared", on the default protocol (base [0,8), gap [8,9), test [9,10)):
# (table, trained from, history window, target window, allowed items window).
DEFINITIONS = {
    "Base": ("legacy", None, "0:8", "0:8", "0:8"),
    "FT-old": ("legacy", "Base", "0:8", "8:9", "0:8"),
    "FT-new": ("refreshed", "Base", "0:8", "8:9", "0:8"),
    "FT-aligned (greedy)": ("aligned-greedy", "Base", "0:8", "8:9", "0:8"),
    "FT-aligned (hungarian)": ("aligned-hungarian", "Base", "0:8", "8:9", "0:8"),
    "FT-aligned+new": ("aligned-hungarian", "Base", "0:8", "8:9", "0:9"),
    "Full": ("refreshed", None, "0:9", "0:9", "0:9"),
    "Full-old": ("legacy", None, "0:9", "0:9", "0:8"),
}


def tiny_config(**overrides):
    return preset(
        "tiny",
        sasrec=SASRecConfig(dim=16, max_epochs=2, valid_users=50, max_length=20),
        fit=TrainConfig(epochs=1, batch_size=64, warmup_steps=2),
        finetune=TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
        beam=20,
        ks=(1, 10, 20),
        max_eval_users=100,
        threads=1,
        **overrides,
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return synthetic_dataset(SyntheticConfig(n_users=300, n_items=160, n_events=6000, n_communities=6),
                             cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, logs):
    every = tuple(p.label for p in POLICIES + ABLATIONS)
    experiment = Experiment(logs, tiny_config(policies=every), tmp_path_factory.mktemp("experiment") / "run",
                            show_progress=False)
    experiment.log = lambda _: None
    return experiment, experiment.run()


def violations(experiment: Experiment, results: dict) -> list[str]:
    """Every way the run's artifacts disagree with DEFINITIONS (empty when none)."""
    out, split = experiment.out, experiment.split
    tables = {"legacy": SidTable.load(out / "legacy/sids"), "refreshed": SidTable.load(out / "refresh/sids"),
              "aligned-greedy": SidTable.load(out / "refresh/aligned-greedy"),
              "aligned-hungarian": SidTable.load(out / "refresh/aligned-hungarian")}
    found = []
    for label, record in results["policies"].items():
        table, parent, history, target, allowed = DEFINITIONS[label]
        for model in record.get("models", [record["model"]]):
            manifest = read_manifest(out / model)
            info = manifest.info
            said = (info.get("history_window"), info.get("target_window"))
            if said != (history, target):
                found.append(f"{label}: {model} trained on history {said[0]}, targets {said[1]}")
            if info.get("sid_table") != tables[table].content_hash or manifest.inputs.get("sid_table") != info.get("sid_table"):
                found.append(f"{label}: {model} did not train on the {table} table")
            if parent is None and manifest.parent is not None:
                found.append(f"{label}: {model} was not trained from scratch")
            if parent is not None:
                base = read_manifest(out / results["policies"][parent]["model"])
                if manifest.parent != base.fingerprint:
                    found.append(f"{label}: {model} does not start from {parent}'s checkpoint")
        if record["allowed"] != allowed or record["sid_table"] != tables[table].content_hash:
            found.append(f"{label}: decoded over items of {record['allowed']} with another table")
    if tables["legacy"].meta["window"] != "0:8" or tables["refreshed"].meta["window"] != "0:9":
        found.append("the legacy table is not fit on base or the refreshed one not on base+gap")
    # The decay table scores Base on every part after base, and never on a part it trained on.
    trained = int(read_manifest(out / results["policies"]["Base"]["model"]).info["target_window"].split(":")[1])
    parts = [row["part"] for row in results["staleness"]["by_part"]]
    if parts != list(range(int(DEFINITIONS["Base"][3].split(":")[1]), split.n_parts)) or min(parts) < trained:
        found.append(f"the decay table scores parts {parts}, Base trained up to part {trained - 1}")
    return found


def test_every_policy_is_what_its_definition_says_from_the_artifacts_alone(run):
    experiment, results = run
    assert list(results["policies"]) == [p.label for p in POLICIES + ABLATIONS] == list(DEFINITIONS)
    assert violations(experiment, results) == []


def test_the_policy_check_fails_when_base_trains_on_the_gap(monkeypatch, logs, tmp_path):
    """The bug this check was written for: Base fit on [0, 9) (base *and* gap) instead of [0, 8)."""
    base = experiment_module.BASE_MODEL
    leaky = ModelSpec(base.tokenizer, base.start, "base+gap")
    monkeypatch.setattr(experiment_module, "BASE_MODEL", leaky)
    rows = {p.label: p for p in POLICIES}
    monkeypatch.setattr(experiment_module, "policy", lambda label: (
        Policy("Base", leaky, "base", rows["Base"].compute, "") if label == "Base" else rows[label]))
    experiment = Experiment(logs, tiny_config(policies=("Base", "FT-old")), tmp_path / "run", show_progress=False)
    experiment.log = lambda _: None
    found = violations(experiment, experiment.run())
    assert "Base: models/scratch-legacy-base-gap trained on history 0:9, targets 0:9" in found
    assert "the decay table scores parts [9], Base trained up to part 8" in found


def test_every_policy_is_scored_with_compute(run):
    _, results = run
    for name, record in results["policies"].items():
        assert set(record["metrics"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 10, 20)}
        assert all(0.0 <= v <= 1.0 for v in record["metrics"].values()), name
        assert record["compute"]["retriever_flops"] > 0
    policies = results["policies"]
    full = policies["Full"]["compute"]
    assert full["retriever_flops"] > policies["FT-aligned (hungarian)"]["compute"]["retriever_flops"]
    # SID compute: embeddings and tokenizer apart; FT-old reuses the legacy table, so none
    assert full["embedding_flops"] > 0 and full["tokenizer_flops"] > 0
    assert policies["FT-old"]["compute"]["embedding_flops"] == policies["FT-old"]["compute"]["tokenizer_flops"] == 0
    # FT-aligned+new decodes with the same model as FT-aligned (hungarian), over more items
    assert policies["FT-aligned+new"]["model"] == policies["FT-aligned (hungarian)"]["model"]


def test_outputs_alignment_and_staleness(run):
    experiment, results = run
    out = experiment.out
    for name in ("results.json", "report.md", "recall_at_k.png", "quality_vs_compute.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["policies"].keys() == results["policies"].keys()
    assert saved["config"] == experiment.config.model_dump(mode="json")  # the run can be repeated from it
    hung = sum(lv["matched"] for lv in results["alignment"]["hungarian"]["levels"])
    greedy = sum(lv["matched"] for lv in results["alignment"]["greedy"]["levels"])
    assert greedy <= hung
    assert all(lv["kept_after"] >= lv["kept_before"] - 1e-12 for lv in results["alignment"]["hungarian"]["levels"])
    assert results["staleness"]["trained_on"] == "0:8"
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
    experiment, cold = run
    shutil.copytree(experiment.out, tmp_path / "run")
    config = experiment.config.model_copy(update={"recipe": "warm", "finetune_seeds": (0, 1),
                                                  "policies": ("Base", "FT-old", "FT-aligned (hungarian)")})
    warm = Experiment(experiment.logs, config, tmp_path / "run", show_progress=False)
    built = []
    warm.log = built.append
    results = warm.run()
    stages = [line.split("] ")[1] for line in built]
    assert not {"legacy", "models/scratch-legacy-base", "models/base-legacy-gap", "eval/base"} & set(stages)
    assert {"refresh", "models/base-legacy-gap-seed1", "models/base-aligned-hungarian-gap-seed1"} <= set(stages)
    old = results["policies"]["FT-old"]
    assert old["seeds"] == [0, 1] and len(old["by_seed"]) == 2
    assert old["by_seed"][0] == cold["policies"]["FT-old"]["metrics"]  # seed 0 is the cached cold-run model
    for key, value in old["metrics"].items():
        assert value == pytest.approx(np.mean([m[key] for m in old["by_seed"]]))
    assert "seeds" not in results["policies"]["Base"]
    assert violations(warm, results) == []
    # the warm tokenizer started from the legacy one: alignment keeps more level-1 codes than the cold refresh
    kept = lambda r: r["alignment"]["hungarian"]["levels"][0]["kept_after"]  # noqa: E731
    assert kept(results) > kept(cold)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Paired over fine-tuning seeds" in report and "FT-aligned (hungarian)" in report.split("## Paired")[1]


def test_recipes_that_differ_only_in_the_remap_share_one_refresh(run, tmp_path):
    """stable and remap-3 build the same SIDs: switching between them refits only the
    fine-tunes on the refreshed table (FT-old and the refresh come from the cache)."""
    experiment, _ = run
    shutil.copytree(experiment.out, tmp_path / "run")
    policies = ("Base", "FT-old", "FT-aligned (hungarian)")
    built = {}
    for name in ("stable", "remap-3"):
        config = experiment.config.model_copy(update={"recipe": name, "policies": policies})
        again = Experiment(experiment.logs, config, tmp_path / "run", show_progress=False)
        built[name] = lines = []
        again.log = lines.append
        again.run()
    stages = {line.split("] ")[1] for line in built["remap-3"]}
    assert "refresh" in {line.split("] ")[1] for line in built["stable"]}
    assert not {"legacy", "refresh", "models/base-legacy-gap"} & stages
    assert "models/base-aligned-hungarian-gap" in stages


def test_the_policy_table_matches_the_design():
    """Each row once; the aligned tokenizers name their method; the definitions above are the table's."""
    rows = POLICIES + ABLATIONS
    assert len({p.label for p in rows}) == len(rows) == len(DEFINITIONS)
    assert {t.alignment for t in Tokenizer} == {None, "greedy", "hungarian"}
    for p in rows:
        table, parent, *_ = DEFINITIONS[p.label]
        assert (str(p.model.tokenizer), p.finetuned) == (table, parent is not None)


def test_the_validation_split_never_reads_the_last_part(logs, tmp_path):
    """Settings are chosen on the validation split; with the last part's events scrambled
    (items permuted among them, so the catalogue and the users are unchanged) every
    number it produces is the same."""
    from dataclasses import replace

    from freshsid.data.temporal import TemporalSplit

    last = TemporalSplit(logs, 10).events(Window(start=9, stop=10))
    item = logs.item.copy()
    item[last] = np.random.default_rng(0).permutation(item[last])
    scrambled = replace(logs, item=item)
    config = tiny_config(policies=("Base", "FT-old", "FT-aligned (hungarian)", "Full"))
    config = config.model_copy(update={"protocol": config.protocol.validation()})
    runs = []
    for i, events in enumerate((logs, scrambled)):
        experiment = Experiment(events, config, tmp_path / f"run{i}", show_progress=False)
        experiment.log = lambda _: None
        runs.append(experiment.run())
    assert runs[0]["staleness"]["trained_on"] == "0:7"
    assert [row["part"] for row in runs[0]["staleness"]["by_part"]] == [7, 8]
    timings = ("eval_seconds", "compute")  # wall seconds differ between any two runs
    for key in ("policies", "baselines", "alignment", "staleness"):
        strip = lambda r: {n: {k: v for k, v in p.items() if k not in timings} if isinstance(p, dict) else p  # noqa: E731
                           for n, p in r[key].items()}
        assert strip(runs[0]) == strip(runs[1]), key


@pytest.mark.parametrize("name", [name for name in RECIPES if name != "cold"])  # cold is the module's main run
def test_each_refresh_recipe_runs_end_to_end(logs, tmp_path, name):
    config = tiny_config(policies=("Base", "FT-old", "FT-aligned (hungarian)"), recipe=name)
    experiment = Experiment(logs, config, tmp_path / "run", show_progress=False)
    experiment.log = lambda _: None
    results = experiment.run()
    assert violations(experiment, results) == []
    recipe = RECIPES[name]
    legacy = read_manifest(experiment.out / "legacy/embeddings")
    refreshed = read_manifest(experiment.out / "refresh/embeddings")
    sasrec, sid = recipe.refresh_configs(config.sasrec, config.sid)
    assert refreshed.config == sasrec.model_dump() and legacy.config == recipe.legacy_configs(config.sasrec, config.sid)[0].model_dump()
    assert SidTable.load(experiment.out / "refresh/sids").meta["tokenizer"]["kind"] == sid.tokenizer
    if recipe.warm_tokenizer:  # a refresh that continues the legacy models keeps more codes than chance
        assert results["alignment"]["hungarian"]["levels"][0]["kept_before"] > 1 / config.sid.codebook_size
    if recipe.move_share < 1:  # the rest of the common items are back on their legacy SIDs
        report = results["alignment"]["hungarian"]
        assert report["kept_items"] == report["common_items"] - round(recipe.move_share * report["common_items"])
        legacy_table, aligned = SidTable.load(experiment.out / "legacy/sids"), SidTable.load(experiment.out / "refresh/aligned-hungarian")
        assert report["sid_agreement_after"] >= report["kept_items"] / report["common_items"]
        assert len(np.unique(aligned.codes, axis=0)) == len(aligned.codes) and aligned.meta["parent"] == legacy_table.content_hash
    # only a fine-tune on the refreshed codes carries embeddings over, and says so in its manifest
    infos = {label: read_manifest(experiment.out / results["policies"][label]["model"]).info
             for label in ("FT-old", "FT-aligned (hungarian)")}
    assert infos["FT-aligned (hungarian)"].get("remapped_levels", 0) == recipe.remap_levels
    assert "remapped_levels" not in infos["FT-old"]


def test_stage_cache_builds_once_rebuilds_on_a_new_key_and_adopts_a_copied_stage(tmp_path):
    from freshsid.evaluate.stages import RunLayout, StageCache

    built = []

    def build(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "value.txt").write_text(str(len(built)))
        built.append(folder)
        return int((folder / "value.txt").read_text())

    def load(folder):
        return int((folder / "value.txt").read_text())

    first = tmp_path / "first"
    assert StageCache(RunLayout(first), log=lambda _: None).get("legacy", {"a": 1}, build, load) == 0
    assert StageCache(RunLayout(first), log=lambda _: None).get("legacy", {"a": 1}, build, load) == 0
    assert len(built) == 1  # a fresh cache over the same folder loads
    assert StageCache(RunLayout(first), log=lambda _: None).get("legacy", {"a": 2}, build, load) == 1

    second = tmp_path / "second"
    shutil.copytree(first / "legacy", second / "legacy")
    cache = StageCache(RunLayout(second), log=lambda _: None)
    cache.adopt("legacy", {"b": 3})
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 3}, build, load) == 1
    assert len(built) == 2  # the adopted copy was loaded, not rebuilt

    # a key changed by the code: a stage recorded under its former key loads, and is recorded anew
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 4}, build, load, former={"b": 3}) == 1
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 4}, build, load) == 1
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 5}, build, load, former={"b": 3}) == 2
    assert len(built) == 3
