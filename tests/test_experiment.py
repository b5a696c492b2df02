"""The whole experiment, every policy, end to end on a tiny synthetic catalog (no stubs).

The policy check reads only what the run wrote (results.json, stages' manifests) and
holds it against the definitions of DESIGN.md, written out here independently of
``freshsid.policies``: a runner that trains a model on the wrong window, from
the wrong start or over the wrong table fails it, whatever its code meant to do.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import freshsid.evaluate.experiment as experiment_module
from freshsid.artifacts import read_manifest
from freshsid.config import SASRecConfig, TrainConfig, load_config, preset
from freshsid.recipes import RECIPES
from freshsid.data.registry import synthetic_dataset
from freshsid.data.temporal import Window
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import read_scores
from freshsid.policies import ABLATIONS, BASE_MODEL, POLICIES, ModelSpec, Policy, Tokenizer, policy
from freshsid.retriever.remap import extends
from freshsid.sid.quantize import residual_encode
from freshsid.sid.table import SidTable
from smalldemo import SMALL_SYNTHETIC

# DESIGN.md, "Policies compared", on the default protocol (base [0,8), gap [8,9), test [9,10)):
# (table, trained from, history window, target window, allowed items window, code embeddings remapped).
DEFINITIONS = {
    "Base": ("legacy", None, "0:8", "0:8", "0:8", False),
    "FT-old": ("legacy", "Base", "0:8", "8:9", "0:8", False),
    "FT-old+new": ("legacy+new", "Base", "0:8", "8:9", "0:9", False),
    "FT-new": ("refreshed", "Base", "0:8", "8:9", "0:8", False),
    "FT-aligned (greedy)": ("aligned-greedy", "Base", "0:8", "8:9", "0:8", False),
    "FT-aligned (hungarian)": ("aligned-hungarian", "Base", "0:8", "8:9", "0:8", False),
    "FT-aligned+new": ("aligned-hungarian", "Base", "0:8", "8:9", "0:9", False),
    "Refresh with remap": ("aligned-hungarian", "Base", "0:8", "8:9", "0:8", True),
    "Refresh with remap+new": ("aligned-hungarian", "Base", "0:8", "8:9", "0:9", True),
    "Full": ("rebuilt", None, "0:9", "0:9", "0:9", False),
    "Full+FT": ("rebuilt", "Full", "0:8", "8:9", "0:9", False),
    "Full-old": ("legacy", None, "0:9", "0:9", "0:8", False),
    "Full (warm SIDs)": ("refreshed", None, "0:9", "0:9", "0:9", False),
}
# The baselines: (what, the window it learns from, allowed items window).
BASELINES = {
    "MostPop(gap)": ("mostpop", "8:9", "0:8"),
    "MostPop(gap)+new": ("mostpop", "8:9", "0:9"),
    "SASRec": ("sasrec", "0:9", "0:9"),
    "SASRec (base)": ("sasrec", "0:8", "0:8"),
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
    return synthetic_dataset(SMALL_SYNTHETIC,
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
    found: list[str] = []
    tables = {"legacy": SidTable.load(out / "legacy/sids"), "refreshed": SidTable.load(out / "refresh/sids"),
              "aligned-greedy": SidTable.load(out / "refresh/aligned-greedy"),
              "aligned-hungarian": SidTable.load(out / "refresh/aligned-hungarian")}
    if (out / "incremental").exists():
        tables["legacy+new"] = SidTable.load(out / "incremental/sids")
    if (out / "rebuild").exists():  # a rebuild: SASRec and tokenizer trained anew on base+gap, nothing carried
        tables["rebuilt"] = SidTable.load(out / "rebuild/sids")
        sasrec = read_manifest(out / "rebuild/embeddings")
        tokenizer = tables["rebuilt"].meta["tokenizer"]
        if (sasrec.parent, sasrec.info["window"], tables["rebuilt"].meta["window"]) != (None, "0:9", "0:9") \
                or tokenizer.get("init_codebooks") is not None or tokenizer.get("init_state") is not None:
            found.append("the rebuild is not a new SASRec and tokenizer on base+gap")
    events = lambda a, b: slice(int(split.bounds[a]), int(split.bounds[b]))  # noqa: E731
    for label, record in results["policies"].items():
        if label in BASELINES:
            found += baseline_violations(experiment, label, record)
            continue
        table, parent, history, target, allowed, remapped = DEFINITIONS[label]
        for model in record.get("models", [record["model"]]):
            manifest = read_manifest(out / model)
            info = manifest.info
            said = (info.get("history_window"), info.get("target_window"))
            if said != (history, target):
                found.append(f"{label}: {model} trained on history {said[0]}, targets {said[1]}")
            if info.get("sid_table") != tables[table].content_hash or manifest.inputs.get("sid_table") != info.get("sid_table"):
                found.append(f"{label}: {model} did not train on the {table} table")
            if parent is None and experiment.config.recent_parts:  # from scratch, then the recency pass
                fit = read_manifest((out / model).parent / f".{Path(model).name}.fit")
                stop, parts = int(target.split(":")[1]), experiment.config.recent_parts
                if (manifest.parent, fit.parent, info.get("recent_window"), fit.info.get("target_window")) != (
                        fit.fingerprint, None, f"{stop - parts}:{stop}", target):
                    found.append(f"{label}: {model} is not its fit on {target} then a pass on its last {parts} part(s)")
            elif parent is None and manifest.parent is not None:
                found.append(f"{label}: {model} was not trained from scratch")
            if parent is not None:
                base = read_manifest(out / results["policies"][parent]["model"])
                if manifest.parent != base.fingerprint:
                    found.append(f"{label}: {model} does not start from {parent}'s checkpoint")
            # (a table that keeps every legacy SID, as a drift-confident recode may, has nothing to carry)
            if bool(info.get("remapped_levels")) != (remapped and not extends(tables[table], tables["legacy"])):
                found.append(f"{label}: {model} remapped {info.get('remapped_levels', 0)} levels")
        if record["allowed"] != allowed or record["sid_table"] != tables[table].content_hash:
            found.append(f"{label}: decoded over items of {record['allowed']} with another table")
    if "legacy+new" in tables:  # incremental coding: legacy SIDs kept, the gap's new items coded by the legacy tokenizer
        legacy, extended = tables["legacy"], tables["legacy+new"]
        gap_items = np.unique(experiment.logs.item[events(8, 9)])
        new = np.setdiff1d(gap_items, experiment.logs.item[events(0, 8)])
        if not np.array_equal(extended.items, np.union1d(legacy.items, new)):
            found.append("FT-old+new: its table does not code exactly the legacy items and the gap's new items")
        if not np.array_equal(extended.codes_for(legacy.items), legacy.codes_for(legacy.items)):
            found.append("FT-old+new: a legacy item's SID changed")
        vectors = np.load(out / "incremental/embeddings/embeddings.npy")  # the vectors the step coded from
        coded = residual_encode(vectors[new].astype(np.float32), legacy.tokenizer_state["codebooks"])
        if extended.meta["stats"]["incremental"]["coded_by"] != legacy.content_hash or not np.array_equal(coded, extended.codes_for(new)[:, :-1]):
            found.append("FT-old+new: the new items are not coded by the legacy tokenizer")
        if len(np.unique(extended.codes, axis=0)) != len(extended.codes):
            found.append("FT-old+new: two items share a SID")
        # incremental coding at its strongest: the vectors it codes with are those the legacy
        # tokenizer read, so it gives every legacy SID back from them; its manifest names how
        method = read_manifest(out / "incremental/sids").info["stats"]["incremental"]["vectors"]
        again = residual_encode(vectors[legacy.items].astype(np.float32), legacy.tokenizer_state["codebooks"])
        if method != experiment.how.incremental or not np.array_equal(again, legacy.codes[:, :-1]):
            found.append(f"FT-old+new: its {method} vectors do not give the legacy SIDs back")
    if tables["legacy"].meta["window"] != "0:8" or tables["refreshed"].meta["window"] != "0:9":
        found.append("the legacy table is not fit on base or the refreshed one not on base+gap")
    # The decay table scores Base on every part after base, and never on a part it trained on.
    trained = int(read_manifest(out / results["policies"]["Base"]["model"]).info["target_window"].split(":")[1])
    parts = [row["part"] for row in results["staleness"]["by_part"]]
    if parts != list(range(int(DEFINITIONS["Base"][3].split(":")[1]), split.n_parts)) or min(parts) < trained:
        found.append(f"the decay table scores parts {parts}, Base trained up to part {trained - 1}")
    return found


def baseline_violations(experiment: Experiment, label: str, record: dict) -> list[str]:
    what, learnt, allowed = BASELINES[label]
    split, logs, found = experiment.split, experiment.logs, []
    if record["allowed"] != allowed:
        found.append(f"{label}: decoded over items of {record['allowed']}")
    a, b = (int(x) for x in learnt.split(":"))
    if what == "mostpop":  # the ranking is the count in the window, most first, among the allowed items
        counts = np.bincount(logs.item[split.bounds[a]:split.bounds[b]], minlength=logs.n_items)
        pool = np.unique(logs.item[: split.bounds[int(allowed.split(":")[1])]])
        expected = sorted(pool, key=lambda item: (-counts[item], item))[: len(record["ranking"]["items"])]
        if record["ranking"]["items"] != [int(i) for i in expected] or record["ranking"]["window"] != learnt:
            found.append(f"{label}: the ranking is not the items' counts in {learnt}")
        if record["ranking"]["counts"] != [int(counts[i]) for i in expected]:
            found.append(f"{label}: the counts it records are not those of {learnt}")
    else:
        stage = "rebuild" if learnt == DEFINITIONS["Full"][2] else "legacy"
        embeddings = read_manifest(experiment.out / f"{stage}/embeddings")
        if embeddings.info.get("window") != learnt:
            found.append(f"{label}: its SASRec trained on {embeddings.info.get('window')}")
    return found


def test_every_policy_is_what_its_definition_says_from_the_artifacts_alone(run):
    experiment, results = run
    assert list(results["policies"]) == [p.label for p in POLICIES + ABLATIONS] == [
        label for label in [p.label for p in POLICIES + ABLATIONS] if label in {**DEFINITIONS, **BASELINES}]
    assert set(results["policies"]) == {*DEFINITIONS, *BASELINES}
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
    experiment = _
    for name, record in results["policies"].items():
        assert set(record["metrics"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 10, 20)}
        assert all(0.0 <= v <= 1.0 for v in record["metrics"].values()), name
        assert (record["compute"]["retriever_flops"] > 0) == (name not in BASELINES)
        # per user, beside the record: one row per test user, whose means are the metrics
        users = pl.read_parquet(experiment.out / record["per_user"][0])
        assert users.height == record["users"] == len(experiment.examples())
        assert {k: users[k].mean() for k in record["metrics"]} == pytest.approx(record["metrics"])
    policies = results["policies"]
    compute = {name: p["compute"] for name, p in policies.items()}
    flops = lambda name, way: compute[name][f"{way}_flops"]  # noqa: E731
    # Compute three ways: retriever only; all-in adds the SIDs a policy builds beyond its
    # starting checkpoint's; cumulative adds everything that checkpoint cost.
    base_all_in = flops("Base", "retriever") + compute["Base"]["embedding_flops"] + compute["Base"]["tokenizer_flops"]
    assert flops("Base", "all_in") == pytest.approx(base_all_in) == pytest.approx(flops("Base", "cumulative"))
    assert flops("FT-old", "all_in") == flops("FT-old", "retriever")
    assert flops("FT-old", "cumulative") == pytest.approx(flops("FT-old", "retriever") + base_all_in)
    assert flops("FT-old+new", "all_in") > flops("FT-old+new", "retriever")  # it needs the refreshed SASRec
    assert flops("Full", "cumulative") == flops("Full", "all_in") > flops("Full", "retriever")  # a cold recipe
    assert flops("Full+FT", "cumulative") == pytest.approx(flops("Full", "cumulative") + flops("Full+FT", "retriever"))
    assert flops("MostPop(gap)", "cumulative") == 0 and flops("SASRec", "all_in") == compute["SASRec"]["embedding_flops"] > 0
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
    # paired intervals of every policy against FT-old and FT-old+new, at the run's largest cutoffs
    for ref in ("FT-old", "FT-old+new"):
        assert set(results["intervals"][ref]) == set(results["policies"]) - {ref}
        cell = results["intervals"][ref]["Full"]["recall@20"]
        assert cell["low"] <= cell["diff"] <= cell["high"] and cell["resamples"] >= 1000
    assert set(results["sensitivity"]["FT-old"]) == {"all", "no gap item in history", "base-item labels only"}
    report = (out / "report.md").read_text()
    assert "## Paired differences against FT-old" in report and "## Sensitivity" in report


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


def test_how_a_finetune_starts_is_no_part_of_the_refresh_and_new_only_when_set():
    assert RECIPES["remap-3"].recode_settings() == RECIPES["remap-3-events"].recode_settings() \
        == RECIPES["remap-3-emb"].recode_settings() == RECIPES["stable"].recode_settings()
    assert RECIPES["remap-3"].finetune_start() == {}  # the keys of earlier runs stay as they were
    assert RECIPES["remap-3-events"].finetune_start() == {"weight": "events"}
    assert RECIPES["remap-3-emb"].finetune_start() == {"embedding_steps": 20}


def test_recipes_that_differ_only_in_the_remap_share_one_refresh(run, tmp_path):
    """remap-1 and remap-3 build the same SIDs: switching between them refits only the
    remapped fine-tune (FT-old, the plain alignment and the recode come from the cache)."""
    experiment, _ = run
    shutil.copytree(experiment.out, tmp_path / "run")
    policies = ("Base", "FT-old", "FT-aligned (hungarian)", "Refresh with remap")
    built = {}
    for name in ("remap-1", "remap-3"):
        config = experiment.config.model_copy(update={"recipe": name, "policies": policies})
        again = Experiment(experiment.logs, config, tmp_path / "run", show_progress=False)
        built[name] = lines = []
        again.log = lines.append
        again.run()
    stages = {line.split("] ")[1] for line in built["remap-3"]}
    assert "refresh" in {line.split("] ")[1] for line in built["remap-1"]}
    # the plain alignment (the paper's, no remap) is the same model under both recipes
    assert not {"legacy", "refresh", "models/base-legacy-gap", "models/base-aligned-hungarian-gap"} & stages
    assert "models/base-aligned-hungarian-gap-remap" in stages


def test_the_policy_table_matches_the_design():
    """Each row once; the aligned tokenizers name their method; the definitions above are the table's."""
    rows = POLICIES + ABLATIONS
    assert len({p.label for p in rows}) == len(rows) == len(DEFINITIONS) + len(BASELINES)
    assert {t.alignment for t in Tokenizer} == {None, "greedy", "hungarian"}
    for p in rows:
        if p.label in BASELINES:
            assert p.baseline and (p.model.kind, p.allowed) == (BASELINES[p.label][0], {"0:8": "base", "0:9": "base+gap"}[
                BASELINES[p.label][2]])
            continue
        table, parent, *_, remapped = DEFINITIONS[p.label]
        assert (str(p.model.tokenizer), p.finetuned, p.model.remap) == (table, parent is not None, remapped)


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
    for key in ("policies", "intervals", "sensitivity", "alignment", "staleness"):
        strip = lambda r: {n: {k: v for k, v in p.items() if k not in timings} if isinstance(p, dict) else p  # noqa: E731
                           for n, p in r[key].items()}
        assert strip(runs[0]) == strip(runs[1]), key


@pytest.mark.parametrize("name", [name for name in RECIPES if name != preset("tiny").recipe])  # (the module's main run)
def test_each_recipe_runs_end_to_end(logs, tmp_path, name):
    recipe = RECIPES[name]
    recoded = "Refresh with remap" if recipe.remap_levels else "FT-aligned (hungarian)"  # (the plain alignment)
    config = tiny_config(policies=("Base", "FT-old", recoded), recipe=name)
    experiment = Experiment(logs, config, tmp_path / "run", show_progress=False)
    experiment.log = lambda _: None
    results = experiment.run()
    assert violations(experiment, results) == []
    legacy = read_manifest(experiment.out / "legacy/embeddings")
    refreshed = read_manifest(experiment.out / "refresh/embeddings")
    sasrec, sid = recipe.recode_configs(config.sasrec, config.sid)
    assert refreshed.config == sasrec.model_dump() and legacy.config == recipe.legacy_configs(config.sasrec, config.sid)[0].model_dump()
    assert SidTable.load(experiment.out / "refresh/sids").meta["tokenizer"]["kind"] == sid.tokenizer
    if recipe.warm_tokenizer:  # a refresh that continues the legacy models keeps more codes than chance
        assert results["alignment"]["hungarian"]["levels"][0]["kept_before"] > 1 / config.sid.codebook_size
    if recipe.drift_margin is not None:  # how many items move is measured, and recorded with the table
        report, drift = results["alignment"]["hungarian"], SidTable.load(experiment.out / "refresh/aligned-hungarian").meta["stats"]["drift"]
        assert drift["moved_items"] == report["common_items"] - report["kept_items"] == round(drift["moved_share"] * drift["common_items"])
        # (on this small world no item passes the rule, so this run checks the path where nothing moves:
        # every legacy SID kept and no embedding carried, below; test_recipes checks the rule moving items)
        assert drift["moved_items"] < drift["common_items"]
    if recipe.move_share < 1:  # the rest of the common items are back on their legacy SIDs
        report = results["alignment"]["hungarian"]
        assert report["kept_items"] == report["common_items"] - round(recipe.move_share * report["common_items"])
        legacy_table, aligned = SidTable.load(experiment.out / "legacy/sids"), SidTable.load(experiment.out / "refresh/aligned-hungarian")
        assert report["sid_agreement_after"] >= report["kept_items"] / report["common_items"]
        assert len(np.unique(aligned.codes, axis=0)) == len(aligned.codes) and aligned.meta["parent"] == legacy_table.content_hash
    # only a fine-tune on the recoded SIDs carries embeddings over, as many levels as the
    # recipe says, and says so in its manifest
    infos = {label: read_manifest(experiment.out / results["policies"][label]["model"]).info
             for label in ("FT-old", recoded)}
    moved = not extends(SidTable.load(experiment.out / "refresh/aligned-hungarian"), SidTable.load(experiment.out / "legacy/sids"))
    assert infos[recoded].get("remapped_levels", 0) == (recipe.carried_levels(config.sid.n_levels) if moved else 0)
    assert "remapped_levels" not in infos["FT-old"]
    # and starts as the recipe says: the weighted remap and the embedding steps are recorded
    start = recipe.finetune_start()
    assert infos[recoded].get("remap_weight", "items") == start.get("weight", "items")
    assert infos[recoded].get("embedding_steps", 0) == start.get("embedding_steps", 0)
    assert infos[recoded].get("remap_basis", "codes") == start.get("basis", "codes")
    assert (infos[recoded].get("distill", 0), infos[recoded].get("replay", 0)) == (start.get("distill", 0), start.get("replay", 0))
    # a recipe's fine-tune settings apply to the fine-tune on the recoded SIDs alone
    assert infos[recoded]["train"] == recipe.finetune_config(config.finetune).model_dump()
    assert infos["FT-old"]["train"] == config.finetune.model_dump()
    assert f"recipe {name}" in results["policies"][recoded]["description"]


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
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 4}, build, load, former=[{"b": 3}]) == 1
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 4}, build, load) == 1
    assert StageCache(RunLayout(second), log=lambda _: None).get("legacy", {"b": 5}, build, load, former=[{"b": 3}]) == 2
    assert len(built) == 3


def benchmark_script(name: str):
    """A script of benchmarks/ loaded as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_runs_pools_builds_into_intervals_and_verdicts_and_a_kept_run_pools_alike(run, tmp_path, capsys,
                                                                                              monkeypatch):
    """benchmarks/summarize_runs.py --pool: two runs of one dataset are two builds (here the
    run and what benchmarks/keep_scores.py kept of it, so each build's differences are the
    pooled ones)."""
    experiment, results = run
    keep, summarize = benchmark_script("keep_scores"), benchmark_script("summarize_runs")
    monkeypatch.setattr("sys.argv", ["keep_scores.py", str(experiment.out), str(tmp_path / "kept")])
    assert keep.main() == 0
    assert not (tmp_path / "kept" / "models").exists()  # scores only, no checkpoints
    summarize.pool([experiment.out, tmp_path / "kept"], "recall@20", "Refresh with remap", 1000)
    out = capsys.readouterr().out
    assert "2 build(s)" in out and "over 2 builds (builds resampled, then users)" in out
    cell = results["intervals"]["FT-old"]["Refresh with remap"]["recall@20"]
    row = next(line for line in out.splitlines() if line.startswith("| Refresh with remap − FT-old | recall@20 |"))
    # the kept copy is the same build twice: no spread between build means, a t interval of one point
    assert f"| {cell['diff']:+.4f} |" in row and f"[{cell['diff']:+.4f}, {cell['diff']:+.4f}]" in row
    assert row.split("|")[-2].strip().split(" ")[0] in ("ahead", "behind", "level")
    for reference in ("FT-old+new", "MostPop(gap)+new", "Full", "Full+FT"):
        assert f"| Refresh with remap+new − {reference} | recall@20 |" in out
    assert "Against the dense SASRec at recall@10, ndcg@10, recall@500:" in out
    dense = next(line for line in out.splitlines() if line.startswith("| FT-old+new − SASRec | recall@10 |"))
    assert "not in these runs" not in dense and dense.split("|")[-2].strip().split(" ")[0] in ("ahead", "behind", "level")
    # a run whose per-user file is gone: exit 2, nothing kept
    shutil.copytree(experiment.out, tmp_path / "broken")
    next((tmp_path / "broken" / "eval").glob("*.users.parquet")).unlink()
    monkeypatch.setattr("sys.argv", ["keep_scores.py", str(tmp_path / "broken"), str(tmp_path / "kept-broken")])
    assert keep.main() == 2 and not (tmp_path / "kept-broken").exists()


def test_the_dense_bar_scores_a_finished_run_with_its_own_config_and_reuses_its_stages(run, monkeypatch):
    """benchmarks/bench_dense_bar.py: Base, SASRec (base) and MostPop(gap) of a finished run, from the config in
    its results.json, without building anything again (the scores are the run's own)."""
    experiment, results = run
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # it imports its sibling scripts
    bar = benchmark_script("bench_dense_bar")
    def stages():
        return {p: p.stat().st_mtime_ns for folder in ("eval", "models", "legacy") for p in (experiment.out / folder).rglob("*")}

    before = stages()
    scores = bar.score(experiment.logs, experiment.out, None, 1)
    assert list(scores) == ["Base", "SASRec (base)", "MostPop(gap)"] and stages() == before
    for label, frame in scores.items():
        kept = pl.read_parquet(experiment.out / results["policies"][label]["per_user"][0])
        assert frame.equals(kept)


def test_the_recency_pass_trains_base_again_on_its_windows_last_part_only(run, tmp_path, monkeypatch):
    """benchmarks/bench_recency.py: Base fine-tuned on the last part of its own window (read
    back from the pass's manifest), Base's checkpoint untouched, scored on Base's users."""
    experiment, _ = run
    shutil.copytree(experiment.out, tmp_path / "run")
    copy = Experiment(experiment.logs, experiment.config, tmp_path / "run", show_progress=False)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    recency = benchmark_script("bench_recency")
    base = copy.layout.path(copy.layout.model(BASE_MODEL))
    weights = {p: p.read_bytes() for p in base.iterdir() if p.is_file()}
    label, scores, compute = recency.recency_pass(copy, 1, None, None)
    window = copy.protocol.base
    manifest = read_manifest(tmp_path / "run/models" / f"base-recent1-e{copy.config.finetune.epochs}-lr{copy.config.finetune.lr:g}")
    assert manifest.info["target_window"] == str(Window(start=window.stop - 1, stop=window.stop))
    assert manifest.info["history_window"] == str(Window(start=0, stop=window.stop - 1))
    assert manifest.parent == read_manifest(base).fingerprint
    assert {p: p.read_bytes() for p in base.iterdir() if p.is_file()} == weights
    assert compute["retriever_flops"] > 0 and label.startswith("Base + last 1 part")
    base_scores = read_scores(copy.out, {"Base": copy.evaluate(policy("Base"))})["Base"]
    assert np.array_equal(scores["user"].to_numpy(), base_scores["user"].to_numpy())
    with pytest.raises(SystemExit):
        recency.recency_pass(copy, window.stop - window.start, None, None)  # the whole window is not a recency pass


def test_from_scratch_models_take_the_recency_pass_the_config_asks_for(run, tmp_path):
    """recent_parts: Base and Full are fit on their window, then trained again on its last
    part (read back from their manifests), and what starts from them starts from that."""
    experiment, _ = run
    shutil.copytree(experiment.out, tmp_path / "run")
    config = tiny_config(policies=("Base", "FT-old", "Full"), recent_parts=1)
    again = Experiment(experiment.logs, config, tmp_path / "run", show_progress=False)
    again.log = lambda _: None
    results = again.run()
    assert violations(again, results) == []
    base = read_manifest(tmp_path / "run" / results["policies"]["Base"]["model"])
    assert base.info["recent_window"] == "7:8" and base.parent != read_manifest(experiment.out / "models/scratch-legacy-base").parent
    assert results["policies"]["Base"]["compute"]["retriever_flops"] > run[1]["policies"]["Base"]["compute"]["retriever_flops"]
    with pytest.raises(ValueError, match="recent_parts"):
        tiny_config(recent_parts=8)  # the whole base window again is no recency pass


def test_kcore_filters_the_events_before_the_test_part_and_mostpop_counts_what_is_left(logs, tmp_path):
    """--kcore: the policies learn from the k-core of the events before the test part; the
    test part is the unfiltered run's."""
    plain = Experiment(logs, tiny_config(policies=("MostPop(gap)",)), tmp_path / "plain", show_progress=False)
    config = tiny_config(policies=("MostPop(gap)",))
    config = config.model_copy(update={"protocol": config.protocol.model_copy(update={"kcore": 12})})
    core = Experiment(logs, config, tmp_path / "core", show_progress=False)
    assert core.logs.n_events < logs.n_events and core.split.bounds[-1] - core.split.bounds[9] == (
        plain.split.bounds[-1] - plain.split.bounds[9])
    a, b = plain.split.examples(Window(start=9, stop=10)), core.split.examples(Window(start=9, stop=10))
    # a test user whose every earlier event fell outside the core has no history left; the others keep their labels
    rows = np.searchsorted(a.users, b.users)
    assert np.array_equal(a.users[rows], b.users) and 0 < len(b) <= len(a)
    assert all(np.array_equal(a.labels(r), b.labels(i)) for i, r in enumerate(rows))
    record = core.evaluate(policy("MostPop(gap)"))
    gap = core.logs.item[core.split.bounds[8]:core.split.bounds[9]]
    assert record["ranking"]["counts"] == np.bincount(gap, minlength=logs.n_items)[record["ranking"]["items"]].tolist()
    assert record["ranking"]["counts"] != plain.evaluate(policy("MostPop(gap)"))["ranking"]["counts"]


def test_a_recipe_that_remaps_more_levels_than_the_sids_have_is_refused_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from freshsid.cli import app

    config = tmp_path / "two-levels.json"
    config.write_text(json.dumps({"preset": "tiny", "sid": {"n_levels": 2}, "recipe": "remap-3"}))
    result = CliRunner().invoke(app, ["experiment", "--dataset", "synthetic", "--config", str(config),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "remap-3" in message and "2" in message
    assert not (tmp_path / "run").exists()


def test_bench_candidates_finetunes_only_the_refresh_rows_of_a_validation_run_and_refuses_the_standard_split(
        logs, run, tmp_path, capsys):
    """benchmarks/bench_candidates.py: a candidate recipe reuses the run's SIDs and Base and
    fine-tunes the two refresh rows again, starting as the candidate says."""
    bench = benchmark_script("bench_candidates")
    config = tiny_config(policies=bench.REFERENCES, recipe="remap-3")
    config = config.model_copy(update={"protocol": config.protocol.validation()})
    Experiment(logs, config, tmp_path / "val", show_progress=False).run()
    frames = bench.scores_of(tmp_path / "val", ["remap-3-events"], logs)
    assert set(frames) == {*bench.REFERENCES, "Refresh with remap [remap-3-events]", "Refresh with remap+new [remap-3-events]"}
    variant = json.loads((tmp_path / "val" / "variants" / "remap-3-events" / "results.json").read_text())
    model = read_manifest(tmp_path / "val" / variant["policies"]["Refresh with remap"]["model"])
    assert model.info["remap_weight"] == "events" and model.parent == read_manifest(tmp_path / "val" / "models/scratch-legacy-base").fingerprint
    with pytest.raises(SystemExit) as stop:
        bench.scores_of(run[0].out, ["remap-3-events"], logs)
    assert stop.value.code == 2 and "standard split" in capsys.readouterr().err


def test_two_builds_differ_in_every_stage_seed(logs, tmp_path):
    """One build seed: the SASRec's, the tokenizer's, Base's and the fine-tune's all follow it,
    read back from the manifests of two builds."""
    seeds = []
    for build in (1, 2):
        experiment = Experiment(logs, tiny_config(policies=("Base", "FT-old"), seed=build), tmp_path / f"b{build}",
                                show_progress=False)
        experiment.log = lambda _: None
        results = experiment.run()
        out = experiment.out
        seeds.append({stage: read_manifest(out / folder).seed for stage, folder in
                      (("sasrec", "legacy/embeddings"), ("tokenizer", "legacy/sids"),
                       ("base", results["policies"]["Base"]["model"]), ("finetune", results["policies"]["FT-old"]["model"]))})
        assert seeds[-1]["sasrec"] == build
    assert all(seeds[0][stage] != seeds[1][stage] for stage in seeds[0]), seeds
    again = load_config(out / "results.json")
    assert again == experiment.config and again.reseeded(1).fit.seed == seeds[0]["base"]
