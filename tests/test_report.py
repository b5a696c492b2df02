import copy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.evaluate.report import headline_paragraph, headline_table, render_markdown
from freshsid.evaluate.report_plots import write_report

KS = (1, 10, 100, 200, 500)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(base):
    # Recall/nDCG grow with K; `base` shifts a policy up or down.
    out = {}
    for k in KS:
        out[f"recall@{k}"] = min(1.0, base * (1 + k / 100))
        out[f"ndcg@{k}"] = min(1.0, base * 0.6 * (1 + k / 200))
    return out


def _policy(kind, base, flops, seconds):
    return {
        "description": f"a {kind} policy",
        "metrics": _metrics(base),
        "compute": {"retriever_flops": flops, "retriever_seconds": seconds,
                    "tokenizer_flops": 1e9, "tokenizer_seconds": 2.0},
        "kind": kind,
    }


# FIXTURE: fabricated numbers shaped like the experiment runner's results.json, not a real run.
@pytest.fixture
def results():
    return {
        "dataset": {"name": "fixture-beauty", "users": 1000, "items": 500, "events": 9000},
        "config": {"preset": "cpu", "sid": {"levels": 3, "codebook_size": 64}},
        "wall_seconds": 1234.5,
        "policies": {
            "Base": _policy("base", 0.10, 4e12, 400.0),
            "FT-old": _policy("finetune", 0.12, 5e11, 50.0),
            "FT-new": _policy("finetune", 0.08, 5e11, 51.0),
            "FT-aligned (greedy)": _policy("finetune", 0.13, 5e11, 52.0),
            "FT-aligned (hungarian)": _policy("finetune", 0.14, 5e11, 50.0),
            "Full": _policy("full", 0.15, 4.5e12, 450.0),
        },
        "alignment": {
            method: {
                "method": method, "common_items": 480,
                "levels": [{"level": lv, "kept_before": 0.1, "kept_after": 0.7, "matched": 60} for lv in range(3)],
                "sid_agreement_before": 0.01, "sid_agreement_after": 0.42, "prefix_agreement_after": [0.7, 0.5, 0.42],
            }
            for method in ("greedy", "hungarian")
        },
        "baselines": {"SASRec": {"metrics": _metrics(0.5)}},
        "staleness": {
            "by_part": [{"part": 8, "recall@100": 0.2, "recall@500": 0.3},
                        {"part": 9, "recall@100": 0.18, "recall@500": 0.28}],
            "churn": [{"level": 0, "churn_raw": 0.9, "churn_aligned": 0.3}],
        },
    }


def _table_rows(md, heading):
    section = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_files_exist_and_pngs_are_valid(results, tmp_path):
    paths = write_report(results, tmp_path / "report")
    names = {p.name for p in paths}
    assert names == {"report.md", "recall_at_k.png", "ndcg_at_k.png", "quality_vs_compute.png"}
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def test_metric_tables_have_every_policy_and_k(results):
    md = render_markdown(results)
    assert "fixture-beauty" in md and "20 min 34 s" in md
    for heading in ("Recall@K", "nDCG@K"):
        header, *rows = _table_rows(md, heading)
        assert [c.strip() for c in header.strip("|").split("|")][1:] == [f"@{k}" for k in KS]
        labels = [r.split("|")[1].strip() for r in rows]
        assert labels == [*results["policies"], "SASRec (baseline)"]
    # Full is best among policies in every column; the (higher) baseline is never bold.
    recall_rows = _table_rows(md, "Recall@K")
    assert recall_rows[-2].count("**") == 2 * len(KS) and "**" not in recall_rows[-1]
    assert f"{results['policies']['Full']['metrics']['recall@500']:.4f}" in recall_rows[-2]


def test_k_columns_sorted_numerically(results):
    for p in results["policies"].values():
        p["metrics"] = {k: p["metrics"][k] for k in sorted(p["metrics"])}  # lexicographic: @1, @10, @100, @200, @5
    results["policies"]["Base"]["metrics"]["recall@5"] = 0.1
    header = _table_rows(render_markdown(results), "Recall@K")[0]
    assert re.findall(r"@(\d+)", header) == ["1", "5", "10", "100", "200", "500"]


def test_compute_ratio_is_full_over_finetune(results):
    results["policies"]["FT-old"]["compute"]["retriever_flops"] = 3e11
    rows = _table_rows(render_markdown(results), "Compute")
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows[1:]}
    header = [c.strip() for c in rows[0].split("|")[2:-1]]
    ratio = header.index("Full / this FLOPs")
    assert cells["FT-old"][ratio] == f"{4.5e12 / 3e11:.1f}×"  # 15.0×
    assert cells["FT-old"][ratio + 1] == f"{450 / 50:.1f}×"
    assert cells["FT-old"][0] == "3.000e+11"
    assert cells["Full"][ratio] == "—" and cells["Base"][ratio] == "—"  # only fine-tunes get a ratio
    assert header[2:6] == ["embedding FLOPs", "embedding s", "tokenizer FLOPs", "tokenizer s"]


def test_headline_says_beats_and_compute_target(results):
    text = headline_paragraph(results)
    assert "FT-aligned (hungarian)" in text and "beats FT-old on both" in text
    assert "K = 100, 200, 500" in text
    assert "9.0× the FLOPs" in text and "meeting the 8× target" in text


def test_headline_names_failing_k(results):
    old = results["policies"]["FT-old"]["metrics"]
    for name in ("FT-aligned (greedy)", "FT-aligned (hungarian)"):
        results["policies"][name]["metrics"]["ndcg@200"] = old["ndcg@200"] - 0.01
        results["policies"][name]["metrics"]["recall@500"] = old["recall@500"]  # a tie is not a win
    results["policies"]["Full"]["compute"]["retriever_flops"] = 2e12
    text = headline_paragraph(results)
    assert "beats" not in text
    assert "Recall@K is not higher at K = 500" in text and "nDCG@K is not higher at K = 200" in text
    assert "higher on both only at K = 100" in text
    assert "short of the 8× target" in text


def test_missing_sections_are_tolerated(results, tmp_path):
    minimal = {"policies": {"FT-old": copy.deepcopy(results["policies"]["FT-old"])}}
    paths = write_report(minimal, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "No quality comparison" in md and "No compute comparison" in md
    assert "No alignment diagnostics" in md and "Staleness" not in md
    assert {p.name for p in paths} >= {"report.md", "recall_at_k.png"}
    assert write_report({}, tmp_path / "empty") == [tmp_path / "empty" / "report.md"]
    # A policy with no compute and partial metrics must not crash either.
    odd = {"policies": {"Full": {"metrics": {"recall@500": float("nan")}}, "FT-aligned (greedy)": {}}}
    assert "—" in render_markdown(odd)


def test_headline_table(results):
    table = headline_table(results, ks=(100, 500))
    lines = table.splitlines()
    assert lines[0] == "| policy | R@100 | R@500 | N@100 | N@500 |"
    assert len(lines) == 2 + len(results["policies"])
    assert f"{results['policies']['Full']['metrics']['ndcg@500']:.4f}" in lines[-1]


@settings(max_examples=60, deadline=None)
@given(
    deltas=st.lists(st.sampled_from([-0.01, 0.0, 0.01]), min_size=6, max_size=6),
    full_flops=st.floats(1e11, 1e13),
)
def test_headline_beats_iff_strictly_higher_everywhere(deltas, full_flops):
    ks = (100, 200, 500)
    old = {f"{x}@{k}": 0.5 for x in ("recall", "ndcg") for k in ks}
    new = {f"{x}@{k}": 0.5 + d for (x, k), d in zip([(x, k) for x in ("recall", "ndcg") for k in ks], deltas)}
    compute = {"retriever_flops": 1e11, "retriever_seconds": 1.0}
    res = {"policies": {
        "FT-old": {"metrics": old, "kind": "finetune", "compute": compute},
        "FT-aligned (greedy)": {"metrics": new, "kind": "finetune", "compute": compute},
        "Full": {"metrics": old, "kind": "full", "compute": {"retriever_flops": full_flops}},
    }}
    text = headline_paragraph(res)
    assert ("beats FT-old" in text) == all(d > 0 for d in deltas)
    for i, x in enumerate(("Recall@K", "nDCG@K")):
        failing = [k for k, d in zip(ks, deltas[3 * i: 3 * i + 3]) if d <= 0]
        if failing:
            assert f"{x} is not higher at K = {', '.join(map(str, failing))}" in text
    assert ("meeting" in text) == (full_flops / 1e11 >= 8)


def test_plus_new_is_reported_beside_the_claim_not_as_it(results):
    # fixture numbers: aligned variants below FT-old, +new above it
    results["policies"]["FT-aligned (greedy)"] = _policy("finetune", 0.11, 5e11, 52.0)
    results["policies"]["FT-aligned (hungarian)"] = _policy("finetune", 0.11, 5e11, 50.0)
    results["policies"]["FT-aligned+new"] = _policy("finetune", 0.2, 5e11, 50.0)
    text = headline_paragraph(results)
    claim, beside = text.split("(Beside the claim", 1)
    assert "does not improve on FT-old" in claim and "FT-aligned+new" not in claim
    assert "FT-aligned+new beats FT-old" in beside


def test_one_runs_headline_says_it_gives_no_verdict_over_builds(results):
    cell = {"diff": 0.012, "low": 0.004, "high": 0.02, "builds": 1, "users": 5517, "resamples": 1000,
            "crossed_low": 0.004, "crossed_high": 0.02, "t_low": None, "t_high": None, "positive": 1}
    results["intervals"] = {"FT-old": {"FT-aligned (hungarian)": {"recall@500": cell}}}
    assert "excludes 0; over builds: level (one build: no t interval; 1 of 1 builds > 0))" in headline_paragraph(results)


def test_intervals_sensitivity_and_compute_three_ways_are_printed(results):
    cell = lambda d, lo, hi: {"diff": d, "low": lo, "high": hi, "builds": 1, "users": 5517, "resamples": 1000}  # noqa: E731
    results["intervals"] = {"FT-old": {
        "FT-aligned (hungarian)": {"recall@500": cell(0.012, 0.004, 0.02), "ndcg@500": cell(-0.001, -0.004, 0.002)},
        "Full": {"recall@500": cell(0.03, 0.02, 0.04), "ndcg@500": cell(0.01, 0.005, 0.015)}}}
    results["sensitivity"] = {name: {"all": {"users": 5517, "recall@500": 0.2},
                                     "no gap item in history": {"users": 4000, "recall@500": 0.19},
                                     "base-item labels only": {"users": 5000, "recall@500": 0.18}}
                              for name in results["policies"]}
    for name, p in results["policies"].items():
        p["compute"].update(all_in_flops=p["compute"]["retriever_flops"] * 2, cumulative_flops=6e12)
    results["policies"]["Full"]["compute"].update(cumulative_flops=1.2e13)
    md = render_markdown(results)
    rows = _table_rows(md, "Paired differences against FT-old")
    assert rows[0].split("|")[2:4] == [" ΔR@500 ", " ΔN@500 "]
    aligned = next(r for r in rows if r.startswith("| FT-aligned (hungarian)"))
    assert "+0.0120 [+0.0040, +0.0200] *" in aligned and "-0.0010 [-0.0040, +0.0020] |" in aligned  # * only off 0
    assert "1000 resamples of the same 5517 test users" in md
    assert "Paired over test users, FT-aligned (hungarian) − FT-old at Recall@500 is +0.0120 [+0.0040, +0.0200]" in md
    sens = _table_rows(md, "Sensitivity")
    assert "no gap item in history: R@500" in sens[0] and "| FT-old | 0.2000 | 0.1900 | 0.1800 |" in sens
    compute = _table_rows(md, "Compute")
    header = [c.strip() for c in compute[0].split("|")[1:-1]]
    old = next(r for r in compute if r.startswith("| FT-old "))
    cells = [c.strip() for c in old.split("|")[1:-1]]
    assert cells[header.index("Full / this all-in FLOPs")] == f"{9e12 / 1e12:.1f}×"  # Full all-in 9e12, FT-old 1e12
    assert cells[header.index("Full / this cumulative FLOPs")] == "2.0×"


def test_the_newcomer_summary_leads_the_report_with_staleness_the_refresh_and_the_references(results):
    from freshsid.evaluate.summary import newcomer_summary

    policies = results["policies"]
    policies["SASRec"] = _policy("baseline", 0.5, 0.0, 0.0)
    policies["MostPop(gap)"] = _policy("baseline", 0.11, 0.0, 0.0)  # above Base (0.10) at every K
    policies["FT-old+new"] = _policy("finetune", 0.12, 5e11, 50.0)
    policies["Refresh with remap+new"] = _policy("finetune", 0.13, 5e11, 50.0)
    results["intervals"] = {"FT-old+new": {"Refresh with remap+new": {"recall@500": {
        "diff": 0.01, "low": 0.004, "high": 0.02}}}}
    text = newcomer_summary(results, ks=(100, 500))
    assert "Recall@500 0.3000 on part 8 and 0.2800 on part 9 (-7%)" in text
    assert "moves 90% of items' first code (30% after alignment)" in text
    assert "Recall@100 0.2600 vs 0.2400" in text and "[+0.0040, +0.0200] (95%, above 0)" in text
    assert "over builds" not in text  # a cell without the crossed and t intervals gives no verdict
    cell = results["intervals"]["FT-old+new"]["Refresh with remap+new"]["recall@500"]
    cell.update(builds=1, crossed_low=0.004, crossed_high=0.02, t_low=None, t_high=None, positive=1)
    assert "over builds the refresh is level (one build: no t interval; 1 of 1 builds > 0)" in newcomer_summary(
        results, ks=(100, 500))
    cell.update(builds=5, t_low=0.001, t_high=0.03, positive=5)
    assert "over builds the refresh is ahead" in newcomer_summary(results, ks=(100, 500))
    assert "SASRec 1.0000 / 1.0000" in text and "MostPop(gap) 0.2200 / 0.6600" in text
    assert "Full 0.3000 / 0.9000 (the best generative policy at @100)" in text
    assert text.endswith("Base is not above MostPop(gap) at any K.")
    policies["MostPop(gap)"] = _policy("baseline", 0.05, 0.0, 0.0)
    assert newcomer_summary(results, ks=(100, 500)).endswith("Base is above MostPop(gap) at every K.")
    md = render_markdown(results)
    assert md.index("What this run shows") < md.index("## Headline")
    del policies["Refresh with remap+new"], results["staleness"]
    assert "Staleness" not in newcomer_summary(results) and "The refresh" not in newcomer_summary(results)
