"""Two runs of the same experiment (config, seed, thread count) are bit-identical.

Each run is its own process, with a different ``PYTHONHASHSEED``, so nothing may
depend on set or dict order of strings, on addresses or on the clock. The config is
the one that once gave Base R@50 0.135 one run and 0.155 the next: the tiny preset
with the RQ-VAE tokenizer and the ``remap-3`` recipe, on the tests' small synthetic
catalog, with a policy of every kind of stage (SIDs built, recoded both ways, trained
from scratch, fine-tuned with and without a remap, a rebuild).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from freshsid.data.synthetic import write_synthetic
from smalldemo import SMALL_SYNTHETIC

# Short schedules (the tiny preset trains to early stopping): the test is about sameness, not quality.
CONFIG = {"preset": "tiny", "recipe": "remap-3", "threads": 1, "sid": {"tokenizer": "rqvae", "codebook_size": 16, "suffix_size": 64},
          "fit": {"epochs": 2}, "sasrec": {"max_epochs": 3, "patience": 2},
          "policies": ["MostPop(gap)+new", "Base", "FT-old", "FT-old+new", "FT-aligned (hungarian)",
                       "Refresh with remap", "Full", "Full+FT"]}


def _start(tmp_path: Path, name: str, hash_seed: str) -> tuple[subprocess.Popen, Path]:
    """One run in its own process, started; the two runs of the test go side by side on
    one thread each (the thread count is part of what must be the same)."""
    config = tmp_path / "config.json"
    if not config.exists():
        config.write_text(json.dumps(CONFIG))
        write_synthetic(SMALL_SYNTHETIC, tmp_path / "logs")
    out = tmp_path / name
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    process = subprocess.Popen([sys.executable, "-m", "freshsid", "--no-progress", "experiment", "--logs",
                                str(tmp_path / "logs" / "interactions.parquet"), "--items",
                                str(tmp_path / "logs" / "items.parquet"), "--drop-duplicates", "--config", str(config),
                                "--device", "cpu", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    return process, out


def _finish(process: subprocess.Popen, out: Path) -> Path:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    return out


def _weights(run: Path) -> dict[str, str]:
    """SHA-256 of every weights and table file the run wrote, by path within the run."""
    files = [p for p in run.rglob("*") if p.suffix in {".safetensors", ".parquet", ".npy"} and ".train" not in str(p)]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _measured(results: dict) -> dict:
    """Everything a run reports that is not a clock reading."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip({k: v for k, v in results.items() if k not in {"wall_seconds", "stage_seconds", "environment"}})


def test_two_runs_of_the_tiny_rqvae_remap_experiment_are_bit_identical(tmp_path):
    started = [_start(tmp_path, "a", "1"), _start(tmp_path, "b", "2")]
    first, second = (_finish(*run) for run in started)
    weights = _weights(first)
    assert any(name.endswith("model.safetensors") for name in weights)  # checkpoints are among them
    assert weights == _weights(second)
    a, b = (json.loads((run / "results.json").read_text()) for run in (first, second))
    assert _measured(a) == _measured(b)
    assert a["policies"]["Base"]["metrics"] == b["policies"]["Base"]["metrics"]
    environment = json.loads((first / "models" / "scratch-legacy-base" / "manifest.json").read_text())["info"]["environment"]
    assert environment["torch_threads"] >= 1 and environment["torch"] and environment["numpy"]
