"""The CLI end to end on a tiny synthetic log (embed -> sids -> retriever -> align -> staleness),
checked against the library it adapts, and bad input through these commands: exit code 2,
one line, nothing written."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import freshsid.config as config_module
from conftest import snapshot
from freshsid.cli import app
from freshsid.config import preset
from freshsid.data.registry import load_dataset
from freshsid.data.synthetic import SyntheticConfig, write_synthetic
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.embed.store import load_embedding_items, load_embeddings
from freshsid.errors import FreshsidError
from freshsid.evaluate.experiment import Experiment
from freshsid.retriever.model import load_checkpoint
from freshsid.retriever.pipeline import evaluate
from freshsid.sid.table import SidTable

from clirun import invoke, runner

TINY = SyntheticConfig(n_users=200, n_items=120, n_events=4000)
SIDS = ["--tokenizer", "rqkmeans", "--levels", "2", "--codebook-size", "8", "--suffix-size", "64"]
TRAIN = ["--preset", "tiny", "--epochs", "1"]
EVAL = ["--beam", "20", "--ks", "1,10,20"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """--logs/--items options of the tiny log, and the log itself."""
    files = write_synthetic(TINY, tmp_path_factory.mktemp("logs"))
    options = ["--logs", str(files.interactions), "--items", str(files.items), "--drop-duplicates"]
    return options, load_dataset(logs=files.interactions, items=files.items, drop_duplicates=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """Every stage once, as a user would chain them; the tests read what each wrote and printed."""
    opts, _ = data
    d = tmp_path_factory.mktemp("run")
    out = {"dir": d}
    for parts in ("0:8", "0:9"):
        name = f"emb-{parts.replace(':', '-')}"
        out[name] = invoke("embed", "collab", *opts, "--parts", parts, "--dim", "8", "--epochs", "1", "--preset", "tiny",
                           "--out", d / name)
    out["build"] = invoke("sids", "build", *opts, "--embeddings", d / "emb-0-8", "--parts", "0:8", *SIDS, "--out", d / "legacy")
    invoke("sids", "build", *opts, "--embeddings", d / "emb-0-9", "--parts", "0:9", *SIDS, "--out", d / "refreshed")
    invoke("sids", "build", *opts, "--embeddings", d / "emb-0-8", *SIDS[:4], "--codebook-size", "4", "--out", d / "other-shape")
    out["inspect"] = invoke("sids", "inspect", d / "legacy", *opts, "--samples", "3", "--json")
    out["inspect-text"] = invoke("sids", "inspect", d / "legacy", "--samples", "2")
    out["train"] = invoke("retriever", "train", *opts, "--sids", d / "legacy", "--parts", "0:8", *TRAIN, "--out", d / "base")
    out["align"] = invoke("sids", "align", d / "legacy", d / "refreshed", "--method", "hungarian", "--out", d / "aligned", "--json")
    out["finetune"] = invoke("retriever", "finetune", *opts, "--checkpoint", d / "base", "--sids", d / "aligned",
                             "--parts", "8:9", *TRAIN, "--out", d / "ft")
    out["finetune-remap"] = invoke("retriever", "finetune", *opts, "--checkpoint", d / "base", "--sids", d / "aligned",
                                   "--remap-from", d / "legacy", "--parts", "8:9", *TRAIN, "--out", d / "ft-remap")
    out["eval"] = invoke("retriever", "eval", *opts, "--checkpoint", d / "ft", "--sids", d / "aligned", *EVAL, "--json",
                         "--out", d / "eval.json")
    out["eval-text"] = invoke("retriever", "eval", *opts, "--checkpoint", d / "ft", "--sids", d / "aligned", *EVAL)
    out["recommend"] = invoke("retriever", "recommend", *opts, "--checkpoint", d / "ft", "--sids", d / "aligned",
                              "--user", "5", "--k", "5", "--allowed", "0:8", "--json")
    out["recommend-more"] = invoke("retriever", "recommend", *opts, "--checkpoint", d / "ft", "--sids", d / "aligned",
                                   "--user", "5", "--k", "40", "--allowed", "0:8", "--json")
    out["staleness"] = invoke("staleness", *opts, "--legacy", d / "legacy", "--refreshed", d / "refreshed",
                              "--checkpoint", d / "base", *EVAL, "--json")
    return out


def test_embed_collab_saves_item_vectors_of_the_training_parts(run, data):
    _, logs = data
    vectors, manifest = load_embeddings(run["dir"] / "emb-0-8")
    assert vectors.shape == (logs.n_items, 8) and manifest.info["window"] == "0:8"
    covered = load_embedding_items(run["dir"] / "emb-0-8")
    seen = TemporalSplit(logs, 10).allowed_items(Window.parse("0:8"))
    assert 0 < len(covered) and np.isin(covered, seen).all()
    assert f"({len(covered)} covered) on parts 0:8" in run["emb-0-8"].stdout


def test_sids_build_codes_the_covered_items_and_prints_its_stats(run, data):
    _, logs = data
    table = SidTable.load(run["dir"] / "legacy")
    assert table.codebook_sizes == (8, 8, 64) and table.meta["window"] == "0:8"
    seen, covered = TemporalSplit(logs, 10).allowed_items(Window.parse("0:8")), load_embedding_items(run["dir"] / "emb-0-8")
    assert np.array_equal(table.items, seen) and np.isin(covered, seen).all()  # every item of the parts is coded
    untrained = len(np.setdiff1d(seen, covered))
    assert (f"never trained on (coded from their initial rows): {untrained:,}" in run["build"].stdout) == (untrained > 0)
    assert (table.item_ids.astype(str) == logs.item_ids[table.items].astype(str)).all()
    stats, text = table.meta["stats"], run["build"].stdout
    assert f"collision rate before suffix: {stats['collision_rate']:.1%}" in text
    assert f"largest group: {stats['max_group_size']} items" in text
    assert "L1 " in text and "L2 " in text and "tokenizer build:" in text
    assert SidTable.load(run["dir"] / "other-shape").codebook_sizes == (4, 4, 256)


def test_sids_build_without_embeddings_trains_them_on_the_fly(monkeypatch, tmp_path, data):
    opts, logs = data
    real = config_module.preset

    def quick(name, **overrides):  # the preset's SASRec, shrunk to one small epoch
        config = real(name, **overrides)
        return config.model_copy(update={"sasrec": config.sasrec.model_copy(update={"max_epochs": 1, "dim": 8})})

    monkeypatch.setattr(config_module, "preset", quick)
    result = invoke("sids", "build", *opts, "--parts", "0:8", *SIDS, "--preset", "tiny", "--out", tmp_path / "sids")
    table = SidTable.load(tmp_path / "sids")
    assert "rqkmeans on collab embeddings of parts 0:8" in result.stdout
    assert table.meta["compute"]["embedding_seconds"] > 0 and table.meta["compute"]["embedding_flops"] > 0
    assert set(table.meta["inputs"]) == {"logs"} and table.meta["inputs"]["logs"] == logs.fingerprint


def test_sids_inspect_reports_stats_and_the_most_populous_prefixes_with_titles(run, data):
    _, logs = data
    table = SidTable.load(run["dir"] / "legacy")
    report = json.loads(run["inspect"].stdout)
    assert report["codebook_sizes"] == [8, 8, 64] and report["n_items"] == len(table)
    assert report["stats"]["collision_rate"] == pytest.approx(table.meta["stats"]["collision_rate"])
    counts = [s["items"] for s in report["samples"]]
    assert len(counts) == 3 and counts == sorted(counts, reverse=True)
    assert counts[0] == np.bincount(table.codes[:, 0]).max()
    titles = dict(zip(logs.items["item_id"].cast(str), logs.items["title"]))
    for sample in report["samples"]:
        for example in sample["examples"]:
            assert example["title"] == titles[example["item_id"]] != ""
    text = run["inspect-text"].stdout  # no dataset: ids only
    assert "utilisation per level" in text and text.count("  code ") == 2


def test_align_keeps_at_least_as_many_codes_and_records_the_legacy_parent(run):
    report = json.loads(run["align"].stdout)
    assert [lv["level"] for lv in report["levels"]] == [0, 1]
    assert all(lv["kept_after"] >= lv["kept_before"] for lv in report["levels"])
    aligned, legacy = SidTable.load(run["dir"] / "aligned"), SidTable.load(run["dir"] / "legacy")
    assert aligned.meta["parent"] == legacy.content_hash


def test_warm_refresh_continues_the_legacy_sasrec_and_tokenizer(run, data, tmp_path):
    opts, _ = data
    d = run["dir"]
    # another seed than the legacy model's, so that only the warm start can keep the two close
    refit = ["embed", "collab", *opts, "--parts", "0:9", "--dim", "8", "--epochs", "1", "--preset", "tiny", "--seed", "5"]
    invoke(*refit, "--warm-from", d / "emb-0-8", "--out", tmp_path / "emb")
    invoke(*refit, "--out", tmp_path / "cold")
    legacy_vectors, _ = load_embeddings(d / "emb-0-8")
    warm_vectors, manifest = load_embeddings(tmp_path / "emb")
    cold_vectors, _ = load_embeddings(tmp_path / "cold")
    assert manifest.config["dim"] == 8
    assert np.linalg.norm(warm_vectors - legacy_vectors) < 0.5 * np.linalg.norm(cold_vectors - legacy_vectors)
    # --warm-epochs 0: the legacy tokenizer codes the legacy embeddings exactly as before
    invoke("sids", "build", *opts, "--embeddings", d / "emb-0-8", "--parts", "0:8", "--warm-from", d / "legacy",
           "--warm-epochs", "0", "--out", tmp_path / "same")
    assert np.array_equal(SidTable.load(tmp_path / "same").codes, SidTable.load(d / "legacy").codes)
    invoke("sids", "build", *opts, "--embeddings", tmp_path / "emb", "--parts", "0:9", "--warm-from", d / "legacy",
           "--out", tmp_path / "refreshed")
    refreshed = SidTable.load(tmp_path / "refreshed")
    assert refreshed.codebook_sizes == SidTable.load(d / "legacy").codebook_sizes and refreshed.tokenizer_state


def test_train_then_finetune_write_linked_checkpoints(run):
    _, base = load_checkpoint(run["dir"] / "base", expected_shape=(8, 8, 64))
    _, ft = load_checkpoint(run["dir"] / "ft", expected_shape=(8, 8, 64))
    assert base.info["mode"] == "fit" and base.info["history_window"] == base.info["target_window"] == "0:8"
    assert len(base.info["history"]) == 1 and base.info["sid_table"] == SidTable.load(run["dir"] / "legacy").content_hash
    assert ft.info["mode"] == "finetune" and (ft.info["history_window"], ft.info["target_window"]) == ("0:8", "8:9") and ft.parent == base.fingerprint
    assert ft.inputs["sid_table"] == SidTable.load(run["dir"] / "aligned").content_hash
    assert "1 epochs on" in run["train"].stdout and str(run["dir"] / "ft") in run["finetune"].stdout
    assert "remapped_levels" not in ft.info


def test_finetune_with_remap_carries_every_semantic_level_from_the_checkpoints_table(run):
    ft = load_checkpoint(run["dir"] / "ft-remap")[1]
    legacy = SidTable.load(run["dir"] / "legacy")
    assert (ft.info["remapped_from"], ft.info["remapped_levels"]) == (legacy.content_hash, legacy.n_levels)
    assert ft.info["sid_table"] == SidTable.load(run["dir"] / "aligned").content_hash


def test_eval_matches_the_library_and_writes_the_same_json(run, data):
    _, logs = data
    printed = json.loads(run["eval"].stdout)
    assert json.loads((run["dir"] / "eval.json").read_text()) == printed
    assert (printed["test"], printed["allowed"], printed["beam"]) == ("9:10", "0:8", 20)
    model, _ = load_checkpoint(run["dir"] / "ft")
    table = SidTable.load(run["dir"] / "aligned")
    expected = evaluate(model, table, TemporalSplit(logs, 10), test=Window.parse("9:10"), allowed=Window.parse("0:8"),
                        ks=(1, 10, 20), beam=20)
    assert printed["metrics"] == pytest.approx(expected)
    assert f"{expected['recall@20']:.4f}" in run["eval-text"].stdout


def test_recommend_returns_original_ids_and_titles_of_allowed_items(run, data):
    _, logs = data
    rows = json.loads(run["recommend"].stdout)["items"]
    more = json.loads(run["recommend-more"].stdout)["items"]
    assert rows == more[:5]  # one beam whatever --k: the top items agree across k
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    allowed = set(logs.item_ids[TemporalSplit(logs, 10).allowed_items(Window.parse("0:8"))].astype(str))
    titles = dict(zip(logs.items["item_id"].cast(str), logs.items["title"]))
    assert all(r["item_id"] in allowed and r["title"] == titles[r["item_id"]] for r in rows)


def test_staleness_reports_churn_per_level_and_recall_by_later_part(run):
    record = json.loads(run["staleness"].stdout)
    assert [c["level"] for c in record["churn"]] == [0, 1]
    assert all(0 <= c["churn_aligned"] <= c["churn_raw"] <= 1 for c in record["churn"])
    assert [p["part"] for p in record["by_part"]] == [8, 9]
    assert all(0 <= p["recall@10"] <= 1 for p in record["by_part"])


def record_runs(monkeypatch) -> dict:
    """Replace Experiment.run (tested in the library) by a stub that records what it was given."""
    seen = {}

    def fake_run(self):
        seen.update(config=self.config, logs=self.logs)
        results = {"policies": {p: {"metrics": {"recall@50": 0.25, "ndcg@50": 0.125}} for p in self.config.policies}}
        (self.out / "results.json").write_text(json.dumps(results))
        return results

    monkeypatch.setattr(Experiment, "run", fake_run)
    return seen


def test_experiment_passes_its_options_to_the_runner(monkeypatch, tmp_path, data):
    opts, _ = data
    seen = record_runs(monkeypatch)
    result = invoke("experiment", *opts, "--preset", "tiny", "--policies", "Base, FT-aligned (hungarian)",
                    "--max-eval-users", "7", "--threads", "1", "--out", tmp_path / "exp")
    config = seen["config"]
    assert config.preset == "tiny" and config.policies == ("Base", "FT-aligned (hungarian)") and config.max_eval_users == 7
    assert config.threads == 1 != preset("tiny").threads
    assert "FT-aligned (hungarian)" in result.stdout and "0.2500" in result.stdout
    assert str(tmp_path / "exp" / "results.json") in result.stdout


def test_experiment_config_file_toml_json_or_a_results_json(monkeypatch, tmp_path, data):
    """--config takes TOML or JSON; a results.json repeats its run; flags still override the file."""
    opts, _ = data
    seen = record_runs(monkeypatch)
    (tmp_path / "c.toml").write_text('preset = "tiny"\nbeam = 7\nrecipe = "remap-1"\n[sasrec]\ndim = 16\n')
    invoke("experiment", *opts, "--config", tmp_path / "c.toml", "--seeds", "0,1", "--out", tmp_path / "a")
    config, tiny = seen["config"], preset("tiny")
    assert (config.beam, config.recipe, config.finetune_seeds) == (7, "remap-1", (0, 1))
    # the tiny preset, with the file's settings merged in key by key
    assert config.sasrec == tiny.sasrec.model_copy(update={"dim": 16}) and config.fit == tiny.fit
    (tmp_path / "results.json").write_text(json.dumps({"config": config.model_dump(mode="json"), "policies": {}}))
    invoke("experiment", *opts, "--config", tmp_path / "results.json", "--out", tmp_path / "b")
    assert seen["config"] == config
    older = config.model_dump(mode="json")  # a results.json from before `refresh` was renamed `recipe`
    older["refresh"] = older.pop("recipe")
    (tmp_path / "results.json").write_text(json.dumps({"config": older, "policies": {}}))
    invoke("experiment", *opts, "--config", tmp_path / "results.json", "--out", tmp_path / "c")
    assert seen["config"] == config


def test_demo_is_the_tiny_preset_on_the_synthetic_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("FRESHSID_CACHE", str(tmp_path / "cache"))
    seen = record_runs(monkeypatch)
    result = invoke("demo", "--out", tmp_path / "demo", "--max-eval-users", "50")
    assert seen["config"].preset == "tiny" and seen["config"].max_eval_users == 50 and seen["logs"].name == "synthetic"
    assert str(tmp_path / "demo" / "results.json") in result.stdout


def test_report_rerenders_from_results_json(tmp_path):
    results = {"dataset": {"name": "tiny"}, "policies": {
        name: {"metrics": {"recall@100": r, "ndcg@100": r / 2}, "compute": {"retriever_flops": f, "retriever_seconds": 1.0},
               "kind": kind}
        for name, r, f, kind in [("FT-old", 0.2, 1e12, "finetune"), ("FT-aligned (hungarian)", 0.3, 1e12, "finetune"),
                                 ("Full", 0.31, 9e12, "full")]}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    result = invoke("report", path, "--out", tmp_path / "report")
    assert str(tmp_path / "report" / "report.md") in result.stdout
    report = (tmp_path / "report" / "report.md").read_text()
    assert "FT-aligned (hungarian) beats FT-old" in report and "Full costs 9.0× the FLOPs" in report


# ----------------------------------------------------------------------------- bad input
def corrupt_table(run, work: Path) -> Path:
    table = work / "legacy"
    shutil.copytree(run["dir"] / "legacy", table)
    raw = bytearray((table / "sids.parquet").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (table / "sids.parquet").write_bytes(bytes(raw))
    return table


def other_logs(run, work: Path) -> list[str]:
    files = write_synthetic(TINY.model_copy(update={"seed": 7}), work / "other")
    return ["--logs", str(files.interactions), "--items", str(files.items), "--drop-duplicates"]


# (id, args from (run, data options, work folder), words the message must contain)
BAD = [
    ("shape-mismatch", lambda r, o, w: ["retriever", "eval", *o, "--checkpoint", r["dir"] / "base",
                                        "--sids", r["dir"] / "other-shape"], ["trained for SID shape", "base"]),
    ("finetune-shape-mismatch", lambda r, o, w: ["retriever", "finetune", *o, "--checkpoint", r["dir"] / "base",
                                                 "--sids", r["dir"] / "other-shape", "--out", w / "ft"], ["SID shape"]),
    ("not-an-artifact", lambda r, o, w: ["retriever", "train", *o, "--sids", w, "--out", w / "m"], ["not a freshsid artifact"]),
    ("wrong-kind", lambda r, o, w: ["sids", "inspect", r["dir"] / "base"], ["'retriever' artifact", "'sid_table'"]),
    ("corrupted-parquet", lambda r, o, w: ["retriever", "train", *o, "--sids", corrupt_table(r, w), "--out", w / "m"],
     ["sids.parquet", "manifest hash"]),
    ("corrupted-parquet-align", lambda r, o, w: ["sids", "align", corrupt_table(r, w), r["dir"] / "refreshed",
                                                 "--out", w / "a"], ["sids.parquet"]),
    ("parts-not-a-range", lambda r, o, w: ["retriever", "train", *o, "--sids", r["dir"] / "legacy", "--parts", "0-8",
                                           "--out", w / "m"], ["'0-8'", "START:STOP"]),
    ("parts-reversed", lambda r, o, w: ["embed", "collab", *o, "--parts", "8:3", "--out", w / "e"], ["'8:3'"]),
    ("parts-past-the-end", lambda r, o, w: ["embed", "collab", *o, "--parts", "5:42", "--out", w / "e"], ["5:42", "last part"]),
    ("test-window-past-the-end", lambda r, o, w: ["retriever", "eval", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                                  r["dir"] / "legacy", "--test", "9:11", "--out", w / "e.json"], ["9:11"]),
    ("unknown-policy", lambda r, o, w: ["experiment", *o, "--preset", "tiny", "--policies", "Base,FT-magic",
                                        "--out", w / "x"], ["FT-magic", "FT-old"]),
    ("bad-seeds", lambda r, o, w: ["experiment", *o, "--preset", "tiny", "--seeds", "0,x", "--out", w / "x"],
     ["--seeds", "'0,x'"]),
    ("repeated-seeds", lambda r, o, w: ["experiment", *o, "--preset", "tiny", "--seeds", "1,1", "--out", w / "x"],
     ["distinct"]),
    ("unknown-preset", lambda r, o, w: ["experiment", *o, "--preset", "huge", "--out", w / "x"], ["'huge'", "tiny"]),
    ("unknown-train-preset", lambda r, o, w: ["retriever", "train", *o, "--sids", r["dir"] / "legacy", "--preset", "huge",
                                              "--out", w / "m"], ["'huge'"]),
    ("bad-ks", lambda r, o, w: ["retriever", "eval", *o, "--checkpoint", r["dir"] / "base", "--sids", r["dir"] / "legacy",
                                "--ks", "10,x"], ["--ks"]),
    ("unknown-user", lambda r, o, w: ["retriever", "recommend", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                      r["dir"] / "legacy", "--user", "nobody"], ["'nobody'"]),
    ("table-of-other-logs", lambda r, o, w: ["retriever", "eval", *other_logs(r, w), "--checkpoint", r["dir"] / "base",
                                             "--sids", r["dir"] / "legacy"], ["codes items that are not those of"]),
    ("embeddings-of-other-logs", lambda r, o, w: ["sids", "build", *other_logs(r, w), "--embeddings", r["dir"] / "emb-0-8",
                                                  *SIDS, "--out", w / "s"], ["emb-0-8", "other logs"]),
    ("source-conflicts-with-embeddings", lambda r, o, w: ["sids", "build", *o, "--embeddings", r["dir"] / "emb-0-8",
                                                          "--source", "content", "--out", w / "s"], ["--source content"]),
    ("suffix-too-small", lambda r, o, w: ["sids", "build", *o, "--embeddings", r["dir"] / "emb-0-8", *SIDS[:6],
                                          "--suffix-size", "1", "--out", w / "s"], ["suffix"]),
    ("warm-from-a-table-without-tokenizer", lambda r, o, w: ["sids", "build", *o, "--embeddings", r["dir"] / "emb-0-9",
                                                             "--parts", "0:9", "--warm-from", stateless(r["dir"] / "aligned", w),
                                                             "--out", w / "s"], ["no tokenizer state"]),
    ("warm-from-other-width", lambda r, o, w: ["embed", "collab", *o, "--dim", "16", "--warm-from", r["dir"] / "emb-0-8",
                                               "--out", w / "e"], ["warm-start weights"]),
    ("bad-sasrec-dim", lambda r, o, w: ["embed", "collab", *o, "--dim", "2", "--out", w / "e"], ["dim"]),
    # an option of the other tokenizer is refused, not ignored
    ("balanced-rqvae", lambda r, o, w: ["sids", "build", *o, "--embeddings", r["dir"] / "emb-0-8", "--tokenizer", "rqvae",
                                        "--balanced", "--out", w / "s"], ["rqkmeans tokenizer only"]),
    ("epochs-rqkmeans", lambda r, o, w: ["sids", "build", *o, "--embeddings", r["dir"] / "emb-0-8", *SIDS, "--epochs", "5",
                                         "--out", w / "s"], ["rqvae tokenizer only"]),
    ("warm-epochs-without-warm-from", lambda r, o, w: ["sids", "build", *o, "--embeddings", r["dir"] / "emb-0-8", *SIDS,
                                                       "--warm-epochs", "3", "--out", w / "s"], ["--warm-from"]),
    ("preset-and-config", lambda r, o, w: ["experiment", *o, "--preset", "tiny", "--config", write(w / "c.json", "{}"),
                                           "--out", w / "x"], ["--preset", "--config"]),
    ("config-unknown-key", lambda r, o, w: ["experiment", *o, "--config", write(w / "c.json", '{"beems": 3}'),
                                            "--out", w / "x"], ["c.json", "beems"]),
    ("config-bad-toml", lambda r, o, w: ["experiment", *o, "--config", write(w / "c.toml", "beam = [1"), "--out", w / "x"],
     ["c.toml", "TOML"]),
    ("config-unknown-policy", lambda r, o, w: ["experiment", *o, "--config", write(w / "c.toml", 'policies = ["FT-odd"]'),
                                               "--out", w / "x"], ["FT-odd"]),
    ("report-not-json", lambda r, o, w: ["report", r["dir"] / "legacy" / "sids.parquet", "--out", w / "rep"],
     ["sids.parquet", "results.json"]),
    ("report-of-no-policy", lambda r, o, w: ["report", write(w / "results.json", '{"policies": {}}'), "--out", w / "rep"],
     ["results.json"]),
    ("report-from-a-device", lambda r, o, w: ["report", "/dev/zero", "--out", w / "rep"], ["/dev/zero", "regular file"]),
    ("logs-from-a-fifo", lambda r, o, w: ["data", "stats", "--logs", fifo(w / "logs.csv")], ["logs.csv", "regular file"]),
    ("items-from-a-fifo", lambda r, o, w: ["data", "stats", o[0], o[1], "--items", fifo(w / "items.csv")],
     ["items.csv", "regular file"]),
    ("config-from-a-fifo", lambda r, o, w: ["experiment", *o, "--config", fifo(w / "c.json"), "--out", w / "x"],
     ["c.json", "regular file"]),
    ("out-is-a-users-folder", lambda r, o, w: ["sids", "align", r["dir"] / "legacy", r["dir"] / "refreshed", "--out",
                                               user_folder(w / "mine")], ["mine", "did not write"]),
    ("out-is-dot", lambda r, o, w: ["sids", "align", r["dir"] / "legacy", r["dir"] / "refreshed", "--out", "."],
     ["names no folder"]),
    ("out-ends-in-dotdot", lambda r, o, w: ["sids", "align", r["dir"] / "legacy", r["dir"] / "refreshed", "--out",
                                            w / "x" / ".."], ["names no folder"]),
    ("experiment-into-a-users-folder", lambda r, o, w: ["experiment", *o, "--preset", "tiny", "--out",
                                                        user_folder(w / "mine")], ["mine", "did not write"]),
    ("report-of-malformed-policies", lambda r, o, w: ["report", write(w / "results.json", '{"policies": {"a": 1}}'),
                                                      "--out", w / "rep"], ["results.json"]),
    ("eval-window-without-users", lambda r, o, w: ["retriever", "eval", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                                   r["dir"] / "legacy", "--test", "0:1", *EVAL], ["parts 0:1"]),
    ("staleness-of-two-shapes", lambda r, o, w: ["staleness", *o, "--legacy", r["dir"] / "legacy", "--refreshed",
                                                 r["dir"] / "other-shape"], ["different shapes"]),
    ("staleness-checkpoint-is-a-table", lambda r, o, w: ["staleness", *o, "--legacy", r["dir"] / "legacy", "--refreshed",
                                                         r["dir"] / "refreshed", "--checkpoint", r["dir"] / "legacy"],
     ["not the 'retriever'"]),
    ("embed-content-into-a-users-folder", lambda r, o, w: ["embed", "content", *o, "--out", user_folder(w / "mine")],
     ["mine", "did not write"]),
    ("demo-into-a-users-folder", lambda r, o, w: ["demo", "--out", user_folder(w / "mine")], ["mine", "did not write"]),
    ("sids-inspect-not-a-table", lambda r, o, w: ["sids", "inspect", r["dir"] / "base"], ["not the 'sid_table'"]),
    ("finetune-on-a-table-of-another-shape", lambda r, o, w: ["retriever", "finetune", *o, "--checkpoint", r["dir"] / "base",
                                                              "--sids", r["dir"] / "other-shape", *TRAIN, "--out", w / "ft"],
     ["shape"]),
    ("remap-from-another-table", lambda r, o, w: ["retriever", "finetune", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                                  r["dir"] / "aligned", "--remap-from", r["dir"] / "refreshed", *TRAIN,
                                                  "--out", w / "ft"], ["trained on another SID table"]),
    ("remap-levels-alone", lambda r, o, w: ["retriever", "finetune", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                            r["dir"] / "aligned", "--remap-levels", "1", *TRAIN, "--out", w / "ft"],
     ["--remap-from"]),
    ("remap-too-many-levels", lambda r, o, w: ["retriever", "finetune", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                               r["dir"] / "aligned", "--remap-from", r["dir"] / "legacy", "--remap-levels",
                                               "3", *TRAIN, "--out", w / "ft"], ["1..2", "not 3"]),
    ("release-into-a-users-folder", lambda r, o, w: ["release", "create", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                                    r["dir"] / "legacy", "--out", user_folder(w / "mine")], ["mine"]),
    ("release-of-another-shape", lambda r, o, w: ["release", "create", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                                  r["dir"] / "other-shape", "--out", w / "rel"], ["shape"]),
    ("promote-a-bad-id", lambda r, o, w: ["release", "promote", w, "latest"], ["'latest'", "release id"]),
    ("promote-an-absent-release", lambda r, o, w: ["release", "promote", w, "r0007"], ["no release r0007"]),
    ("rollback-without-history", lambda r, o, w: ["release", "rollback", w], ["no earlier release"]),
    ("k-above-beam", lambda r, o, w: ["retriever", "recommend", *o, "--checkpoint", r["dir"] / "base", "--sids",
                                      r["dir"] / "legacy", "--user", "5", "--k", "30", "--beam", "20"], ["--beam 30"]),
]


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def stateless(table: Path, work: Path) -> Path:
    """A copy of ``table`` without its tokenizer (as tables an older version aligned are)."""
    import dataclasses

    dataclasses.replace(SidTable.load(table), tokenizer_state=None).save(work / "stateless")
    return work / "stateless"


@pytest.mark.parametrize(("make_args", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run, data, tmp_path, monkeypatch, make_args, words):
    work = tmp_path / "work"
    work.mkdir()
    args = [str(a) for a in make_args(run, data[0], work)]  # set-up files exist before the snapshot
    monkeypatch.chdir(work)
    before = snapshot(run["dir"], tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output and result.stdout == ""
    for word in words:
        assert word in message, message
    assert snapshot(run["dir"], tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere regardless of permission bits")
def test_an_unwritable_out_is_refused_before_training(run, data, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    result = runner.invoke(app, [str(a) for a in ["retriever", "train", *data[0], "--sids", run["dir"] / "legacy", *TRAIN,
                                                  "--out", locked / "base"]])
    assert result.exit_code == 2 and "permission denied" in result.stderr and "epochs on" not in result.stdout


def test_a_second_writer_to_the_same_out_is_refused_while_the_first_holds_it(run, tmp_path):
    from freshsid.artifacts import output_lock

    out = tmp_path / "aligned"
    with output_lock(out):
        result = runner.invoke(app, ["sids", "align", str(run["dir"] / "legacy"), str(run["dir"] / "refreshed"),
                                     "--out", str(out)])
    assert result.exit_code == 2 and "Another freshsid command is writing" in result.stderr and not out.exists()
    invoke("sids", "align", run["dir"] / "legacy", run["dir"] / "refreshed", "--out", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned"]  # no lock, temporary or .old folder left


def test_two_writer_processes_on_one_out_leave_one_valid_artifact(run, tmp_path):
    """Two real processes write the same --out at once: each finishes or is refused with a
    sentence; the folder ends up one valid artifact with nothing left beside it."""
    import subprocess
    import sys

    out = tmp_path / "aligned"
    (tmp_path / ".aligned.abc.tmp").mkdir()  # a killed writer's leftover: cleaned by the next write
    args = [sys.executable, "-m", "freshsid.cli", "sids", "align", str(run["dir"] / "legacy"),
            str(run["dir"] / "refreshed"), "--out", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert {code for code, _ in outcomes} <= {0, 2} and 0 in {code for code, _ in outcomes}
    assert all("Traceback" not in err for _, err in outcomes)
    assert all("Another freshsid command is writing" in err for code, err in outcomes if code == 2)
    SidTable.load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned"]


def test_releases_create_list_promote_and_roll_back(run, data, tmp_path):
    from freshsid.serve.release import Releases, load_release

    opts, logs = data
    d, root = run["dir"], tmp_path / "releases"
    first = invoke("release", "create", *opts, "--checkpoint", d / "base", "--sids", d / "legacy", "--out", root, "--promote")
    assert first.stdout.startswith("r0001 (current)")
    invoke("release", "create", *opts, "--checkpoint", d / "ft", "--sids", d / "aligned", "--out", root)
    listed = json.loads(invoke("release", "list", root, "--json").stdout)
    assert listed["current"] == "r0001" and [r["id"] for r in listed["releases"]] == ["r0001", "r0002"]
    assert listed["releases"][1]["parent"] == "r0001"
    assert (listed["releases"][1]["history"], listed["releases"][1]["target"]) == ("0:8", "8:9")
    invoke("release", "promote", root, "r0002")
    release = Releases(root).load_current()
    assert release.id == "r0002" and release.table.content_hash == SidTable.load(d / "aligned").content_hash
    titles = dict(zip(logs.items["item_id"].cast(str), logs.items["title"]))
    assert release.catalog["title"].to_list() == [titles[i] for i in release.catalog["item_id"].to_list()]
    assert invoke("release", "rollback", root).stdout.strip() == "current: r0001"
    # a bundle whose files do not match its manifest cannot be promoted; the pointer stays
    catalog = root / "releases" / "r0002" / "catalog.parquet"
    catalog.write_bytes(catalog.read_bytes()[:-10])
    refused = runner.invoke(app, ["release", "promote", str(root), "r0002"])
    assert refused.exit_code == 2 and "catalog.parquet" in refused.stderr and Releases(root).current == "r0001"
    with pytest.raises(FreshsidError):
        load_release(root / "releases" / "r0002")
    refused = runner.invoke(app, ["release", "rollback", str(root)])
    assert refused.exit_code == 2 and "no earlier release" in refused.stderr


def torchrun(*args):
    """``torchrun --nproc-per-node 2 -m freshsid -- ARGS`` on the CPU (gloo), one thread per rank (the ``--`` keeps
    torchrun from reading ``--logs`` as an abbreviation of its own ``--logs-specs``)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "freshsid", "--",
           *[str(a) for a in args]]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_trains_collab_embeddings_and_the_retriever_and_evaluates_like_one_process(run, data, tmp_path):
    opts, _ = data
    d = run["dir"]
    torchrun("embed", "collab", *opts, "--parts", "0:8", "--dim", "8", "--epochs", "1", "--preset", "tiny",
             "--device", "cpu", "--out", tmp_path / "emb")
    assert load_embeddings(tmp_path / "emb")[0].shape == load_embeddings(d / "emb-0-8")[0].shape
    trained = torchrun("retriever", "train", *opts, "--sids", d / "legacy", "--parts", "0:8", *TRAIN, "--out",
                       tmp_path / "base")
    assert trained.stdout.count("1 epochs on") == 1  # rank 0 reports for both
    _, manifest = load_checkpoint(tmp_path / "base", expected_shape=(8, 8, 64))
    assert manifest.info["processes"] == 2 and manifest.info["history_window"] == "0:8"
    sharded = torchrun("retriever", "eval", *opts, "--checkpoint", d / "ft", "--sids", d / "aligned", *EVAL, "--json")
    assert json.loads(sharded.stdout)["metrics"] == json.loads(run["eval"].stdout)["metrics"]


def test_commands_that_run_as_one_process_refuse_torchrun(monkeypatch, tmp_path, data):
    opts, _ = data
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["experiment", *opts, "--preset", "tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "launch it without torchrun" in result.output
    assert not (tmp_path / "run").exists()


def test_an_unavailable_device_is_refused_in_one_sentence(run, data):
    opts, _ = data
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    d = run["dir"]
    result = runner.invoke(app, ["retriever", "eval", *opts, "--checkpoint", str(d / "ft"), "--sids", str(d / "aligned"),
                                 *EVAL, "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    result = runner.invoke(app, ["retriever", "eval", *opts, "--checkpoint", str(d / "ft"), "--sids", str(d / "aligned"),
                                 *EVAL, "--device", "tpu"])
    assert result.exit_code == 2 and "Unknown device 'tpu'" in result.output
