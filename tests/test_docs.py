"""The docs run: every code block of the tutorial pages is executed, in order, on a small
synthetic catalog; the quick start gives the demo's metrics; the site builds with
warnings as errors.

The tutorial pages share one namespace, as a reader's session would (the concepts page
continues the quick start). ``python`` blocks are executed; ``bash`` blocks are
``freshsid`` command lines, run in-process; a page may hold no other kind of block.
To stay fast, the synthetic catalog and the ``tiny`` preset are shrunk for both the
quick start and the CLI's demo alike (the same patch covers both).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import freshsid
from freshsid.cli import app
from freshsid.recipes import RECIPES
from smalldemo import shrink

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = ("quickstart.md", "concepts.md", "production.md", "scale-out.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

def blocks(page: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((DOCS / page).read_text())]


def commands(script: str) -> list[list[str]]:
    """The command lines of a bash block (backslash continuations joined)."""
    lines = script.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """Run every block of the tutorial pages; returns the namespace and the working folder."""
    work = tmp_path_factory.mktemp("tutorial")
    runner = CliRunner()
    namespace: dict = {"__name__": "tutorial"}
    with pytest.MonkeyPatch.context() as mp:
        shrink(mp, work)
        for page in TUTORIAL:
            for number, (language, code) in enumerate(blocks(page), 1):
                where = f"{page}, block {number}"
                if language == "python":
                    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own code
                    continue
                assert language == "bash", f"{where}: a tutorial block is python or bash, not {language!r}"
                for argv in commands(code):
                    assert argv[0] == "freshsid", f"{where}: {argv[0]} is not a freshsid command"
                    result = runner.invoke(app, argv[1:])
                    assert result.exit_code == 0, f"{where}: {' '.join(argv)}\n{result.output}"
    return namespace, work


def run_blocks(text: str, where: str, namespace: dict) -> None:
    """Run a page's python and bash (freshsid command lines) blocks; ``shell`` blocks are shown only."""
    runner = CliRunner()
    for number, (language, code) in enumerate(FENCE.findall(text), 1):
        if language == "python":
            exec(compile(code, f"{where}, block {number}", "exec"), namespace)  # noqa: S102 - the docs' own code
        elif language == "bash":
            for argv in commands(code):
                assert argv[0] == "freshsid", f"{where}, block {number}: {argv[0]} is not a freshsid command"
                result = runner.invoke(app, argv[1:])
                verdicts = (0, 4) if argv[1] == "refresh" else (0,)  # 4: the gate refused the candidate, not an error
                assert result.exit_code in verdicts, f"{where}, block {number}: {' '.join(argv)}\n{result.output}"
        else:
            assert language == "shell", f"{where}, block {number}: a block is python, bash or shell, not {language!r}"


def test_the_readme_is_a_front_door_whose_code_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    assert not re.search(r"[Ii]ssue \d", text)  # no tracker numbers in user-facing text
    namespace: dict = {"__name__": "readme"}
    with pytest.MonkeyPatch.context() as mp:
        shrink(mp, tmp_path)
        run_blocks(text, "README.md", namespace)
    assert set(namespace["tuned"].evaluate(namespace["split"], test=namespace["config"].protocol.test,
                                           allowed=namespace["config"].protocol.base, ks=(10,))) == {"recall@10", "ndcg@10"}
    assert freshsid.Releases(tmp_path / "runs" / "cli" / "releases").ids() == ["r0001", "r0002"]


def test_every_tutorial_block_runs(tutorial):
    namespace, work = tutorial
    assert sum(len(blocks(page)) for page in TUTORIAL) >= 20
    assert (work / "runs" / "demo" / "results.json").is_file()
    assert freshsid.Releases(work / "runs" / "releases").current == "r0001"  # promoted, refreshed, rolled back


def test_the_quick_start_gets_the_demos_metrics(tutorial):
    namespace, work = tutorial
    demo = json.loads((work / "runs" / "demo" / "results.json").read_text())["policies"]
    scores = namespace["scores"]
    assert set(scores) == {"Base", "Refresh with remap"}
    for name, metrics in scores.items():
        assert metrics == demo[name]["metrics"], name
    assert scores["Base"] != scores["Refresh with remap"]  # two models, not one scored twice


def test_the_recipe_table_lists_every_recipe():
    text = (DOCS / "recipes.md").read_text()
    listed = set(re.findall(r"^\| `([\w-]+)` \|", text, re.M))
    assert listed == set(RECIPES)


def test_the_api_reference_covers_the_public_names():
    text = (DOCS / "api.md").read_text()
    for name in freshsid.__all__:
        if name != "__version__":
            assert f".{name}" in text, name


def test_the_docs_build_with_warnings_as_errors(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
