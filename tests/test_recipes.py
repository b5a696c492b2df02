"""The recipes' catalogue (freshsid.recipes), the replay mix a fine-tune draws and the
drift rule a recode follows (freshsid.recode.drift_kept_items)."""

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from freshsid.config import TrainConfig
from freshsid.data.sequences import Sequences, mixed
from freshsid.recipes import RECIPES, Recipe
from freshsid.recode import drift_kept_items
from freshsid.sid.align import align, stick
from freshsid.sid.table import SidTable


def sequences(n: int, first_user: int, width: int) -> Sequences:
    items = np.arange(n * width).reshape(n, width)
    return Sequences(np.arange(first_user, first_user + n), items, np.ones((n, width), dtype=bool))


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_replay_takes_the_configured_share_of_as_many_windows(share):
    gap, past = sequences(40, 0, 3), sequences(500, 1000, 4)
    mix, replayed = mixed(gap, past, share, np.random.default_rng(0))
    assert len(mix) == len(gap) and replayed == round(share * len(gap))
    assert (mix.users >= 1000).sum() == replayed  # the past's windows, each once
    assert len(np.unique(mix.users)) == len(mix)
    assert mix.items.shape[1] == 4 and (mix.items[mix.users < 1000, 0] == -1).all()  # left-padded
    assert not mix.target[mix.users < 1000, 0].any()
    # fewer past windows than the share asks: all of them, still as many windows in all
    few, replayed = mixed(gap, sequences(3, 1000, 3), share, np.random.default_rng(0))
    assert len(few) == len(gap) and replayed == min(3, round(share * len(gap)))


def test_the_candidates_of_the_head_are_recipes_over_the_step():
    start = {name: RECIPES[name].finetune_start() for name in ("remap-3-distill", "remap-3-replay", "remap-3-prefix")}
    assert start == {"remap-3-distill": {"distill": 1.0}, "remap-3-replay": {"replay": 0.25},
                     "remap-3-prefix": {"basis": "prefixes"}}
    # none of them changes the recode (they share remap-3's); the drift rule does, and keys it
    assert all(RECIPES[name].recode_settings() == RECIPES["remap-3"].recode_settings() for name in start)
    assert "drift_margin" not in RECIPES["remap-3"].recode_settings()
    assert RECIPES["drift-remap-3"].recode_settings()["drift_margin"] == 0.1
    # the paper's fine-tune applies to the fine-tunes on recoded SIDs, over the run's settings
    tuned = RECIPES["cold-ft30"].finetune_config(TrainConfig(epochs=2, lr=5e-4, batch_size=64))
    assert (tuned.epochs, tuned.lr, tuned.schedule, tuned.warmup_steps, tuned.batch_size) == (30, 1e-4, "constant", 0, 64)
    assert RECIPES["cold-ft30"].recode_settings() == RECIPES["cold"].recode_settings()
    plain = TrainConfig()
    assert RECIPES["remap-3"].finetune_config(plain) is plain


def test_conflicting_settings_are_refused():
    with pytest.raises(ValidationError, match="set one of them"):
        Recipe(name="x", description="", move_share=0.5, drift_margin=0.1)
    with pytest.raises(ValidationError, match="set remap_levels"):
        Recipe(name="x", description="", distill=1.0)
    with pytest.raises(ValidationError, match="lr"):
        Recipe(name="x", description="", finetune={"lr": -1}).finetune_config(TrainConfig())


def test_only_items_that_drifted_with_confidence_and_evidence_take_new_sids():
    """drift-remap-3's rule: item 3 now sits among legacy first code 1's items and has gap
    events, so it moves; item 6 moved as far but has none, item 2 only half way: both keep
    their legacy SIDs, bit for bit, and the share that moved is recorded."""
    sizes = (4, 4, 8)
    first = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    legacy = SidTable(items=np.arange(8), codes=np.column_stack([first, np.arange(8) % 4, np.arange(8) // 4]).astype(np.int32),
                      codebook_sizes=sizes, item_ids=np.array([f"i{i}" for i in range(8)]))
    vectors = np.array([[0, 0], [0, 0.1], [4, 0], [10, 0.5], [10, 0], [10, 0.1], [0, 0.2], [10, 0.2]], dtype=np.float32)
    refit = SidTable(items=np.arange(9), codes=np.column_stack([np.arange(9) % 3, np.arange(9) % 4, np.zeros(9, int)]).astype(np.int32),
                     codebook_sizes=sizes, item_ids=np.array([f"i{i}" for i in range(9)]))  # item 8 is new
    refreshed = SimpleNamespace(table=refit, embeddings=SimpleNamespace(vectors=np.vstack([vectors, [[5, 5]]])))
    events = np.array([0, 5, 5, 3, 0, 0, 0, 0, 9])
    keep, stats = drift_kept_items(legacy, refreshed, events, margin=0.1, min_events=2)
    assert keep.tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert stats["moved_items"] == 1 and stats["moved_share"] == 1 / 8 and stats["far_share"] == 2 / 8
    aligned = stick(legacy, align(legacy, refit, method="hungarian")[0], keep)
    assert np.array_equal(aligned.codes_for(keep), legacy.codes_for(keep))  # the whole SID, suffix included
    assert aligned.meta["stats"]["alignment"]["kept_items"] == 7
    assert len(np.unique(aligned.codes, axis=0)) == len(aligned)


def test_head_loss_classes_each_label_by_how_the_refresh_recoded_it(monkeypatch):
    from pathlib import Path

    from test_experiment import benchmark_script

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # it reads bench_recipes' settings

    def table(rows: dict[int, tuple[int, ...]]) -> SidTable:
        items = np.array(sorted(rows))
        return SidTable(items=items, codes=np.array([rows[i] for i in items], dtype=np.int32),
                        codebook_sizes=(2, 2, 2, 2), item_ids=items.astype(str))

    legacy = table({0: (0, 0, 0, 0), 1: (0, 1, 0, 0), 2: (1, 0, 0, 0), 3: (1, 1, 1, 0), 5: (1, 0, 1, 0)})
    # 2 joins 1's code (both merged), 3 changes at level 3, 5 at level 1, 0 keeps its code, 4 is new
    refreshed = table({0: (0, 0, 0, 0), 1: (0, 1, 0, 0), 2: (0, 1, 0, 1), 3: (1, 1, 0, 0), 5: (0, 0, 1, 0),
                       4: (1, 1, 1, 0)})
    kinds = benchmark_script("head_loss").classes(legacy, refreshed, np.array([4, 0, 1, 2, 3, 5, 0]))
    assert kinds.tolist() == ["new", "kept", "merged", "merged", "level 3", "level 1", "kept"]


def test_the_recipe_table_joins_runs_and_applies_the_rule_to_every_recipe(monkeypatch, tmp_path):
    """benchmarks/recipe_table.py: a later run adds only the recipes the earlier lack, and the
    rule (the best mean among the recipes never behind) is applied to all of them."""
    import json
    from pathlib import Path

    from test_experiment import benchmark_script

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    script = benchmark_script("recipe_table")
    cells = script.CELLS

    def cell(diff: float, behind: bool = False) -> dict:  # a behind cell: crossed and t both below 0
        high = -0.001 if behind else 0.01
        return {"diff": diff, "crossed_low": -0.01, "crossed_high": high, "t_low": -0.01, "t_high": high,
                "positive": 0, "builds": 3}

    def run(path: Path, recipes: dict[str, tuple[float, bool]]) -> Path:
        labels = {f"{script.REFRESH} [{r}]": v for r, v in recipes.items()}
        path.write_text(json.dumps({
            "means": {script.OPPONENT: dict.fromkeys(cells, 0.1), script.POPULAR: dict.fromkeys(cells, 0.05),
                      **{label: dict.fromkeys(cells, mean) for label, (mean, _) in labels.items()}},
            "intervals": {script.OPPONENT: {script.POPULAR: {c: cell(-0.05) for c in cells},
                                            **{label: {c: cell(mean - 0.1, behind and c == "ndcg@50")
                                                       for c in cells} for label, (mean, behind) in labels.items()}}}}))
        return path

    first = run(tmp_path / "a.json", {"remap-3": (0.11, False), "fast": (0.13, True)})
    second = run(tmp_path / "b.json", {"remap-3": (0.5, False), "slow": (0.12, False)})
    found = script.rows([first, second])
    assert list(found) == ["remap-3", "fast", "slow"] and found["remap-3"]["source"] == str(first)
    means, chosen = script.choose(found)
    assert chosen == "slow" and means["fast"] > means["slow"]  # the best mean is behind at one cell


def test_the_opponent_at_a_recipes_budget_fine_tunes_as_that_recipe_on_the_runs_own_sids(monkeypatch, tmp_path):
    """bench_recipes.py --opponent-at: FT-old+new again, on the same incremental table, with the
    recipe's fine-tune settings, read back from the checkpoint's manifest."""
    from pathlib import Path

    from test_experiment import benchmark_script

    from freshsid.artifacts import read_manifest
    from freshsid.data.registry import synthetic_dataset
    from smalldemo import SMALL_SYNTHETIC

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    bench = benchmark_script("bench_recipes")
    slow = RECIPES["cold-ft30"].model_copy(update={"finetune": {**RECIPES["cold-ft30"].finetune, "epochs": 3}})
    monkeypatch.setitem(bench.RECIPES, "slow", slow)
    logs = synthetic_dataset(SMALL_SYNTHETIC, cache_dir=tmp_path / "cache")
    frames = bench.build(logs, 1, tmp_path / "b1", "tiny", ["remap-3"], 1, opponent_at=("slow",))
    label = bench.opponent_at_label("slow")
    assert set(frames) == {"MostPop(gap)+new", bench.OPPONENT, f"{bench.REFRESH} [remap-3]", label}
    assert frames[label]["user"].equals(frames[bench.OPPONENT]["user"])
    own, tuned = (read_manifest(tmp_path / "b1" / "models" / name)
                  for name in ("base-legacy-new-gap", "base-legacy-new-gap@ft-slow"))
    assert tuned.info["train"]["epochs"] == 3 and tuned.info["train"]["lr"] == 1e-4
    assert tuned.info["train"]["schedule"] == "constant" and own.info["train"]["epochs"] != 3
    assert tuned.info["sid_table"] == own.info["sid_table"]  # the same incremental coding
