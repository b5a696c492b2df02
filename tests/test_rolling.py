"""The rolling protocol end to end on a tiny synthetic catalog: every strategy, every
round, the aligned chain's tables checked from the artifacts, and resume after a crash."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

import freshsid.evaluate.rolling as rolling_module
from freshsid.config import SASRecConfig, TrainConfig, preset
from freshsid.evaluate.rolling_config import ROLLING_STRATEGIES, RollingConfig
from freshsid.data.registry import synthetic_dataset
from freshsid.data.synthetic import SyntheticConfig
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.evaluate.rolling import Rolling
from freshsid.sid.table import SidTable


def config(**overrides) -> RollingConfig:
    run = preset("tiny", sasrec=SASRecConfig(dim=16, max_epochs=2, valid_users=50, max_length=20),
                 fit=TrainConfig(epochs=1, batch_size=64, warmup_steps=2),
                 finetune=TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
                 beam=20, ks=(1, 10, 20), max_eval_users=100, threads=1)
    return RollingConfig(run=run, n_parts=7, initial=3, calibration_rounds=1, **{"held_out": 0, **overrides})


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return synthetic_dataset(SyntheticConfig(n_users=300, n_items=200, n_events=6000, n_communities=6,
                                             new_item_share=0.4), cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def run(logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rolling") / "run"
    runner = Rolling(logs, config(), out, show_progress=False)
    runner.log = lambda _: None
    return out, runner.run()


def test_every_strategy_is_scored_on_the_part_after_the_one_it_used(run):
    out, results = run
    assert [r["round"] for r in results["rounds"]] == [3, 4, 5]
    for record in results["rounds"]:
        assert record["scored_on"] == record["uses_part"] + 1 == record["round"] + 1
        assert list(record["strategies"]) == list(ROLLING_STRATEGIES)
        for entry in record["strategies"].values():
            assert set(entry["metrics"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 10, 20)}
    # Frozen never spends, Full spends most; FT-old keeps its codes, the chain adds items.
    summary = results["summary"]["strategies"]
    assert summary["Frozen"]["flops"] == 0 < summary["FT-old"]["flops"] < summary["Full"]["flops"]
    assert summary["MostPop"]["flops"] == 0 < summary["Incremental"]["flops"] < summary["Full"]["flops"]
    for name, row in summary.items():  # times less than Full, from the summed retriever FLOPs of the rounds
        spent = sum(r["strategies"][name]["compute"]["retriever_flops"] for r in results["rounds"])
        assert row["retriever_flops"] == pytest.approx(spent)
        ratio = row["less_than_full"]["retriever_flops"]
        assert ratio is None if spent == 0 else ratio == pytest.approx(summary["Full"]["retriever_flops"] / spent)
    assert summary["Full"]["less_than_full"] == {"retriever_flops": 1.0, "flops": 1.0}
    assert all(x == 1.0 for r in results["rounds"] for x in r["strategies"]["FT-old"]["kept_since_start"])
    for name in ("Aligned", "Incremental"):
        assert sum(r["strategies"][name]["items_added"] for r in results["rounds"]) > 0
    for name in ("report.md", "recall_by_round.png", "compute_vs_quality.png", "codes_over_rounds.png"):
        assert (out / name).stat().st_size > 0


def test_a_held_out_part_is_never_read(run, logs, tmp_path):
    """With the last part's events scrambled (items permuted among them, so the catalogue
    and the users are unchanged), a run that holds it out scores every round it has as
    the run that reads the last part did."""
    out, results = run
    last = TemporalSplit(logs, 7).events(Window(start=6, stop=7))
    item = logs.item.copy()
    item[last] = np.random.default_rng(0).permutation(item[last])
    strategies = ("FT-old", "Aligned", "MostPop")
    runner = Rolling(replace(logs, item=item), config(held_out=1, strategies=strategies), tmp_path / "run",
                     show_progress=False)
    runner.log = lambda _: None
    held = runner.run()
    assert [r["round"] for r in held["rounds"]] == [3, 4] and held["config"]["held_out"] == 1
    metrics = lambda rounds: [{n: r["strategies"][n]["metrics"] for n in strategies} for r in rounds]  # noqa: E731
    assert metrics(held["rounds"]) == metrics(results["rounds"][:2])


def test_the_aligned_chain_keeps_sids_unique_and_codebooks_used(run):
    """From the saved tables: each round's aligned table has the previous round's as
    parent, never repeats a SID, codes every item seen so far, and uses as many codes per
    level as the fresh tokenizer Full fit on the same window."""
    out, results = run
    parent = SidTable.load(out / "initial/sids/sids")
    for i, record in enumerate(results["rounds"]):
        r = record["round"]
        chain = SidTable.load(out / f"steps/{'R' * (i + 1)}/sids/aligned-hungarian")
        fresh = SidTable.load(out / f"full/r{r}/sids/sids")
        assert chain.meta["parent"] == parent.content_hash
        assert len(np.unique(chain.codes, axis=0)) == len(chain)
        assert set(parent.items) <= set(chain.items) and set(chain.items) == set(fresh.items)
        for level in range(chain.n_levels):
            assert len(np.unique(chain.codes[:, level])) >= len(np.unique(fresh.codes[:, level]))
        assert record["strategies"]["Aligned"]["duplicate_sids"] == 0
        parent = chain


def test_incremental_keeps_every_sid_and_codes_new_items_with_the_initial_tokenizer(run):
    """From the saved tables and checkpoints: each round's incremental table keeps every
    SID of the one before, adds exactly the items seen since (the items Full codes), was
    coded by the previous table with the initial tokenizer's state unchanged, and its
    model was fine-tuned on the round's part without a remap."""
    from freshsid.artifacts import read_manifest

    out, results = run
    initial = SidTable.load(out / "initial/sids/sids")
    served = initial
    for i, record in enumerate(results["rounds"]):
        r, path = record["round"], "I" * (i + 1)
        table = SidTable.load(out / f"steps/{path}/sids/sids")
        assert np.array_equal(table.codes_for(served.items), served.codes)
        assert set(table.items) == set(SidTable.load(out / f"full/r{r}/sids/sids").items) >= set(served.items)
        assert len(np.unique(table.codes, axis=0)) == len(table)
        assert table.meta["stats"]["incremental"]["coded_by"] == served.content_hash
        assert table.tokenizer_state.keys() == initial.tokenizer_state.keys()
        assert all(np.array_equal(table.tokenizer_state[k], initial.tokenizer_state[k]) for k in initial.tokenizer_state)
        info = read_manifest(out / f"steps/{path}/model").info
        assert info["target_window"] == f"{r}:{r + 1}" and "remapped_levels" not in info
        entry = record["strategies"]["Incremental"]
        assert entry["path"] == path and entry["items_added"] == len(table) - len(served)
        assert entry["kept"] == [1.0] * initial.n_levels and entry["compute"]["embedding_flops"] > 0
        served = table


def test_mostpop_ranks_by_the_rounds_part_and_each_round_has_paired_intervals(run, logs):
    import polars as pl

    from freshsid.data.temporal import TemporalSplit, Window
    from freshsid.metrics import per_user
    from freshsid.retriever.pipeline import sample_users

    out, results = run
    cfg = config().run
    split = TemporalSplit(logs, 7)
    for record in results["rounds"]:
        r = record["round"]
        counts = np.bincount(logs.item[split.events(Window(start=r, stop=r + 1))], minlength=logs.n_items)
        ranking = sorted(split.allowed_items(Window(start=0, stop=r + 1)), key=lambda i: (-counts[i], i))[:20]
        examples = sample_users(split.examples(Window(start=r + 1, stop=r + 2), max_history=cfg.protocol.max_history),
                                cfg.max_eval_users)
        expected = per_user(np.tile(ranking, (len(examples), 1)), examples.label_indptr, examples.label_items, cfg.ks)
        scores = pl.read_parquet(out / f"eval/mostpop/part{r + 1}.users.parquet")
        assert scores["user"].to_list() == examples.users.tolist()
        np.testing.assert_allclose(scores["recall@20"].to_numpy(), expected["recall@20"])
        entry = record["strategies"]["MostPop"]
        assert entry["metrics"]["recall@20"] == pytest.approx(float(np.mean(expected["recall@20"])))
        assert not any(entry["compute"].values())
        # every strategy against Incremental, FT-old, Full and MostPop, on the round's users
        intervals = record["intervals"]
        assert list(intervals) == ["Incremental", "FT-old", "Full", "MostPop"]
        assert list(intervals["Incremental"]) == [n for n in ROLLING_STRATEGIES if n != "Incremental"]
        metrics = {n: e["metrics"] for n, e in record["strategies"].items()}
        for ref, rows in intervals.items():
            for name, cells in rows.items():
                cell = cells["recall@20"]
                assert cell["diff"] == pytest.approx(metrics[name]["recall@20"] - metrics[ref]["recall@20"])
                assert cell["low"] <= cell["diff"] <= cell["high"] and cell["users"] == len(examples)
    # the mean over rounds: the rounds' differences averaged, users resampled within each round
    for ref, rows in results["over_rounds"].items():
        for name, cells in rows.items():
            cell = cells["recall@20"]
            per_round = [r["intervals"][ref][name]["recall@20"]["diff"] for r in results["rounds"]]
            assert cell["diff"] == pytest.approx(np.mean(per_round)) and cell["low"] <= cell["diff"] <= cell["high"]
    report = (out / "report.md").read_text()
    assert "Paired differences by round" in report and "Mean over rounds 3–5" in report


def test_the_trigger_calibrates_on_the_first_rounds_then_decides_by_its_threshold(run):
    _, results = run
    trigger, rounds = results["trigger"], results["rounds"]
    assert trigger["signal"] == "decay" and len(trigger["calibration_values"]) == 1
    assert trigger["threshold"] == pytest.approx(float(np.mean(trigger["calibration_values"])))
    path = ""
    for record in rounds:
        s = record["signals"]
        assert 0.0 <= s["unseen"] <= 1.0
        if not s["calibrating"]:
            assert s["refreshed"] == (s["decay"] >= trigger["threshold"])
        # below the threshold it codes the part's new items when there are any, else does nothing
        assert s["action"] == ("refresh" if s["refreshed"] else "incremental" if s["unseen"] > 0 else "nothing")
        path += {"refresh": "R", "incremental": "I", "nothing": ""}[s["action"]]
        assert record["strategies"]["Triggered"]["path"] == path
    # while it refreshes every round it is the chain: same stages, same scores
    assert rounds[0]["strategies"]["Triggered"]["metrics"] == rounds[0]["strategies"]["Aligned"]["metrics"]


def test_an_interrupted_run_resumes_to_the_same_results(run, logs, tmp_path, monkeypatch):
    out, results = run
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    # A crash after the first round: drop what the later rounds built and the results.
    for stage in ("steps/RR", "steps/RRR", "steps/FF", "steps/FFF", "full/r4", "full/r5", "results.json"):
        shutil.rmtree(resumed / stage, ignore_errors=True) if (resumed / stage).is_dir() else (resumed / stage).unlink(missing_ok=True)
    calls = []
    real_fit = rolling_module.pipeline.fit
    monkeypatch.setattr(rolling_module.pipeline, "fit", lambda *a, **k: calls.append(k["window"]) or real_fit(*a, **k))
    runner = Rolling(logs, config(), resumed, show_progress=False)
    runner.log = lambda _: None
    again = runner.run()
    assert [str(w) for w in calls] == ["0:5", "0:6"]  # the initial build and round 3's Full were kept
    strip = lambda res: [{n: e["metrics"] for n, e in r["strategies"].items()} for r in res["rounds"]]  # noqa: E731
    assert strip(again) == strip(json.loads(json.dumps(results)))


def test_a_remapping_recipe_carries_embeddings_into_each_refresh_only(logs, tmp_path):
    from freshsid.artifacts import read_manifest

    cfg = config(strategies=("FT-old", "Aligned"))
    cfg = cfg.model_copy(update={"n_parts": 5, "run": cfg.run.model_copy(update={"recipe": "remap-1"})})
    runner = Rolling(logs, cfg, tmp_path / "run", show_progress=False)
    runner.log = lambda _: None
    runner.run()
    served = SidTable.load(tmp_path / "run/initial/sids/sids")
    refreshed = read_manifest(tmp_path / "run/steps/R/model").info
    assert refreshed["remapped_levels"] == 1 and refreshed["remapped_from"] == served.content_hash
    assert "remapped_levels" not in read_manifest(tmp_path / "run/steps/F/model").info


def test_summarize_rolling_tables_the_mean_over_rounds_against_incremental(run, capsys, monkeypatch):
    from test_experiment import benchmark_script

    out, results = run
    monkeypatch.setattr("sys.argv", ["summarize_rolling.py", str(out)])
    benchmark_script("summarize_rolling").main()
    lines = capsys.readouterr().out.splitlines()
    strategies, rest = lines[2:2 + len(ROLLING_STRATEGIES)], lines[2 + len(ROLLING_STRATEGIES):]
    against, by_round = rest[:3 + 4], rest[3 + 4:]
    rows = {line.split(" | ")[1]: line for line in strategies}
    cells = lambda c: f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"  # noqa: E731
    aligned = results["over_rounds"]["Incremental"]["Aligned"]
    assert cells(aligned["recall@10"]) in rows["Aligned"] and cells(aligned["recall@20"]) in rows["Aligned"]
    assert "| 1.0× | 1.0× |" in rows["Full"] and rows["Incremental"].count("—") == 3
    # then Aligned against every reference, at every cutoff with an interval
    assert [line.split(" | ")[1] for line in against[3:]] == [f"Aligned − {r}" for r in ("Incremental", "FT-old", "Full", "MostPop")]
    assert against[1].count("ΔR@") == against[1].count("ΔN@") == 3
    assert cells(results["over_rounds"]["MostPop"]["Aligned"]["ndcg@20"]) in against[-1].rsplit(" | ", 1)[1]
    # last, Aligned against Incremental in each round
    assert len(by_round) == 3 + len(results["rounds"])
    for line, record in zip(by_round[3:], results["rounds"], strict=True):
        assert line.startswith(f"| synthetic | {record['round']} (part {record['scored_on']}) | ")
        assert cells(record["intervals"]["Incremental"]["Aligned"]["recall@10"]) in line
