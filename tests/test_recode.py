"""The recode step has one home: the experiment, rolling and the Python API run the same
step on the same inputs and get byte-identical SID tables and remap plans, and no other
module builds SIDs, codes new items or aligns on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from freshsid import api
from freshsid.config import SASRecConfig, TrainConfig, preset
from freshsid.data.registry import synthetic_dataset
from freshsid.data.temporal import Window
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.rolling import Rolling
from freshsid.evaluate.rolling_config import RollingConfig
from smalldemo import SMALL_SYNTHETIC

SRC = Path(__file__).resolve().parents[1] / "src" / "freshsid"
# What only the step (src/freshsid/recode.py) may call or define: SASRec training for SIDs,
# a tokenizer fit, incremental coding, alignment, a remap plan.
STEP_PARTS = {"collab_embeddings", "build_table", "code_items", "code_new_items", "align", "stick", "RemapPlan",
              "build_collab_sids", "aligned", "incremental", "remap"}
CALLERS = ("evaluate/experiment.py", "evaluate/rolling.py", "serve/refresh.py", "api.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The aligned and the incremental step on parts [0, 9) from a legacy build on [0, 8),
    through the experiment, rolling and the API (a warm recipe that remaps three levels)."""
    logs = synthetic_dataset(SMALL_SYNTHETIC,
                             cache_dir=tmp_path_factory.mktemp("cache"))
    config = preset("tiny", sasrec=SASRecConfig(dim=16, max_epochs=2, valid_users=50, max_length=20),
                    fit=TrainConfig(epochs=1, batch_size=64, warmup_steps=2),
                    finetune=TrainConfig(epochs=1, batch_size=64, warmup_steps=1), threads=1, recipe="remap-3")
    out = tmp_path_factory.mktemp("recode")
    experiment = Experiment(logs, config, out / "experiment", show_progress=False)
    rolling = Rolling(logs, RollingConfig(run=config, n_parts=10, initial=8, held_out=0), out / "rolling", show_progress=False)
    experiment.log = rolling.log = lambda _: None
    first, window = rolling.initial(), Window(start=0, stop=9)
    builder = api.CollabSidBuilder.from_config(config).fit(experiment.split, config.protocol.base)
    return {
        "experiment": (experiment.refreshed(), experiment.incremental()),
        "rolling": (rolling._recode("steps/R/sids", first, window, "aligned"),
                    rolling._recode("steps/I/sids", first, window, "incremental").table),
        "api": (builder.recode(experiment.split, window), builder.recode(experiment.split, window, mode="incremental")),
    }


def test_the_experiment_rolling_and_the_api_recode_to_the_same_bytes(runs):
    (exp_aligned, exp_kept), (roll_aligned, roll_kept), (api_aligned, api_kept) = (
        runs["experiment"], runs["rolling"], runs["api"])
    assert exp_aligned.table.content_hash == roll_aligned.table.content_hash == api_aligned.table_.content_hash
    assert exp_aligned.plan is not None and exp_aligned.plan.levels == 3
    assert exp_aligned.plan.key() == roll_aligned.plan.key() == api_aligned.plan_.key()
    assert exp_kept.content_hash == roll_kept.content_hash == api_kept.table_.content_hash
    assert api_kept.plan_ is None  # incremental coding moves no SID: nothing to carry over


@pytest.mark.parametrize("module", CALLERS)
def test_the_callers_of_the_step_do_not_build_sids_themselves(module):
    """A second copy of the step that "differs a little" fails here: its callers call it
    through ``recode.<name>`` (or the public API) and never the parts it is made of."""
    tree = ast.parse((SRC / module).read_text())
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}  # (module level)
    original = {alias.asname or alias.name: alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module != "freshsid.recode" for alias in node.names}
    called = {original[node.func.id] for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in original}
    allowed = {"align", "code_items"} if module == "api.py" else set()  # (the public wrappers)
    assert (defined | called) & STEP_PARTS <= allowed, module


INTERNAL = ("freshsid.recode", "freshsid.retriever.pipeline")  # the core the public API wraps


@pytest.mark.parametrize("module", sorted(p.name for p in (SRC / "commands").glob("*.py")))
def test_the_commands_reach_the_core_through_the_public_api(module):
    """Every command module (module-level and function-level imports alike) reaches the
    recode step and the retriever's stages through :mod:`freshsid.api` only."""
    tree = ast.parse((SRC / "commands" / module).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 for alias in node.names}  # (from freshsid import recode)
    assert not imported & set(INTERNAL), module
