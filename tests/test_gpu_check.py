"""benchmarks/gpu_check.sh, dry run: every step of the GPU check on the CPU at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_trains_and_scores_in_both_precisions(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert record["device"] == "cpu" and set(record["runs"]) == {"bf16", "fp32"}
    for run in record["runs"].values():
        assert run["steps"] > 0 and run["tokens_per_s"] > 0
        assert all(0.0 <= v <= 1.0 for v in run["metrics"].values()) and "recall@20" in run["metrics"]
    assert set(record["bf16_minus_fp32"]) == set(record["runs"]["bf16"]["metrics"])
    assert "CUDA-marked tests" in (tmp_path / "gpu-check.log").read_text()


def test_the_gpu_check_refuses_a_machine_without_a_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr
