"""The public API: lazy, typed, documented by examples that run, and a thin layer over
the pipeline (the estimators' results are the pipeline's)."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import freshsid
from freshsid import api
from freshsid.config import SASRecConfig, SidConfig
from freshsid.data import registry
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.errors import FreshsidError
from freshsid.retriever import pipeline
from freshsid.sid.table import SidTable
from smalldemo import shrink

ROOT = Path(__file__).resolve().parents[1]
# The docstring examples, in the order a reader runs them: each continues the last.
EXAMPLES = (registry.load_dataset, Window, TemporalSplit, api.CollabSidBuilder, SidTable, api.CollabSidBuilder.recode,
            api.align, api.code_items, api.GenerativeRetriever)
PUBLIC_MODULES = ("freshsid/__init__.py", "freshsid/api.py", "freshsid/data/registry.py", "freshsid/data/temporal.py",
                  "freshsid/data/layouts.py", "freshsid/sid/table.py", "freshsid/serve/release.py", "freshsid/config.py")


def test_importing_freshsid_and_naming_load_dataset_loads_no_torch():
    code = "import freshsid, sys; freshsid.load_dataset; assert 'torch' not in sys.modules, 'torch'"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_every_public_name_resolves_and_an_unknown_one_fails():
    for name in freshsid.__all__:
        assert getattr(freshsid, name) is not None
    assert set(freshsid.__all__) <= set(dir(freshsid))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        freshsid.nope  # noqa: B018


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """Run the docstring examples in one namespace on the small catalog; returns it."""
    namespace: dict = {}
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with pytest.MonkeyPatch.context() as mp:
        shrink(mp, tmp_path_factory.mktemp("examples"))
        for obj in EXAMPLES:
            test = parser.get_doctest(obj.__doc__, namespace, obj.__qualname__, None, 0)
            assert test.examples, f"{obj.__qualname__} has no example"
            runner.run(test, clear_globs=False)
            namespace = test.globs  # (a DocTest works on a copy of the names it is given)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed; see the output above"
    return namespace


def test_every_estimator_and_function_of_the_api_has_an_example(examples):
    for name in api.__all__:
        assert ">>> " in getattr(api, name).__doc__, name
    assert examples["tuned"].table_ is examples["fresh"].table_


def test_the_estimators_learn_state_with_a_trailing_underscore_and_refuse_when_unfitted(examples):
    fresh_builder, fresh_retriever = api.CollabSidBuilder(), api.GenerativeRetriever()
    for unfitted, call in [(fresh_builder, lambda: fresh_builder.table_),
                           (fresh_retriever, lambda: fresh_retriever.evaluate(examples["split"], test=examples["test"],
                                                                              allowed=examples["base"]))]:
        with pytest.raises(FreshsidError, match="not fitted yet"):
            call()
    assert examples["builder"].get_params()["recipe"] == freshsid.preset("tiny").recipe
    retriever = examples["retriever"]
    assert retriever.model_ is not None and retriever.checkpoint_.is_dir() and retriever.table_ is examples["builder"].table_
    assert retriever.trained_window_ == examples["base"]  # (histories and targets both on base)
    with pytest.raises(FreshsidError, match="no parameter 'epochs'"):
        fresh_retriever.set_params(epochs=3)
    assert fresh_retriever.set_params(beam=7) is fresh_retriever and fresh_retriever.beam == 7


def test_the_retriever_is_the_pipelines_and_survives_save_and_load(examples, tmp_path):
    split, tuned, test, base = examples["split"], examples["tuned"], examples["test"], examples["base"]
    direct = pipeline.evaluate(tuned.model_, tuned.table_, split, test=test, allowed=base, ks=(10,), beam=tuned.beam)
    assert tuned.evaluate(split, test=test, allowed=base, ks=(10,)) == direct
    tuned.save(tmp_path / "ft")
    again = api.GenerativeRetriever.load(tmp_path / "ft", tuned.table_)
    assert again.get_params() == tuned.get_params()  # size, schedules, recipe and beam come back with it
    ex = split.examples(test)
    first, _ = tuned.recommend(ex.inputs[:8], ex.users[:8], k=5)
    second, _ = again.recommend(ex.inputs[:8], ex.users[:8], k=5)
    np.testing.assert_array_equal(first, second)
    with pytest.raises(FreshsidError, match="another SID table"):
        api.GenerativeRetriever.load(tmp_path / "ft", examples["builder"].table_)


def test_the_sid_builder_survives_save_and_load(examples, tmp_path):
    builder = examples["builder"]
    builder.save(tmp_path / "legacy")
    again = api.CollabSidBuilder.load(tmp_path / "legacy")
    np.testing.assert_array_equal(again.table_.codes, builder.table_.codes)
    assert again.logs_fingerprint_ == examples["split"].logs.fingerprint


def test_a_saved_and_reloaded_builder_recodes_as_the_unsaved_one_and_recodes_chain(examples, tmp_path):
    """The configs and the recipe travel with a saved builder: a warm recode (remap-3 continues
    the legacy SASRec and tokenizer) of the reloaded builder gives the same table, not one
    from the default (tiny) SASRec; and a recoded builder recodes again."""
    split = examples["split"]
    config = freshsid.preset("cpu", sasrec=SASRecConfig(dim=48, max_epochs=1, valid_users=0),
                             sid=SidConfig(tokenizer="rqkmeans", codebook_size=16, suffix_size=64), recipe="remap-3")
    builder = api.CollabSidBuilder.from_config(config).fit(split, Window(start=0, stop=7))
    again = api.CollabSidBuilder.load(builder.save(tmp_path / "legacy"))
    assert again.get_params() == builder.get_params()
    first, second = (b.recode(split, Window(start=0, stop=8)) for b in (builder, again))
    assert first.table_.content_hash == second.table_.content_hash
    assert first.plan_ is not None and first.plan_.levels == 3 and first.plan_.key() == second.plan_.key()
    chained = api.CollabSidBuilder.load(first.save(tmp_path / "recoded")).recode(split, Window(start=0, stop=9))
    assert chained.table_.content_hash == first.recode(split, Window(start=0, stop=9)).table_.content_hash
    kept = first.recode(split, Window(start=0, stop=9), mode="incremental")
    np.testing.assert_array_equal(kept.table_.codes_for(first.table_.items), first.table_.codes)
    assert kept.plan_ is None


def test_align_refuses_an_unknown_method(examples):
    with pytest.raises(FreshsidError, match="hungarian, greedy|greedy, hungarian"):
        api.align(examples["builder"].table_, examples["fresh"].build_.table, method="nearest")


def test_the_public_modules_pass_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                             "--cache-dir", str(ROOT / ".mypy_cache"), *PUBLIC_MODULES],
                            cwd=ROOT / "src", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (ROOT / "src" / "freshsid" / "py.typed").is_file()
