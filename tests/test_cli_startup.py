"""The CLI starts without the heavy libraries: building every command's help loads no torch.

Runs in a fresh interpreter, since this test process (conftest) has already imported torch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "faiss", "polars", "pandas", "scipy", "fastapi", "uvicorn", "sklearn")

PROBE = """
import json, sys
import typer
from typer.testing import CliRunner
from freshsid.cli import app

def walk(command, path=()):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))

runner = CliRunner()
helps = []
for path in walk(typer.main.get_command(app)):
    result = runner.invoke(app, [*path, "--help"])
    helps.append((" ".join(path), result.exit_code, result.stdout))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in set(sys.argv[1].split(",")))
print(json.dumps({"helps": helps, "heavy": heavy}))
"""


def run_probe(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code, ",".join(HEAVY)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_building_every_help_imports_no_heavy_library():
    probe = run_probe(PROBE)
    assert len(probe["helps"]) >= 28  # the root, six sub-apps and every command
    assert all(code == 0 and "Example" in text for _, code, text in probe["helps"])
    assert probe["heavy"] == []


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a module that does import torch is reported."""
    code = ("import json, sys\nimport freshsid.sid.table\n"
            "print(json.dumps({'heavy': sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1].split(','))}))")
    assert "torch" in run_probe(code)["heavy"]
