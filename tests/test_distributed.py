"""Several processes: torchrun + gloo training matches one process, survives a SIGKILL of
one rank, and sharded evaluation gives exactly the one-process metrics.

Each case launches real ``torchrun`` process groups on the CPU (two ranks, one thread
each); the tiny world and model come from test_train.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from freshsid.data.temporal import Window
from freshsid.retriever import pipeline
from freshsid.retriever.train import TrainConfig, train
from freshsid.runtime import Runtime, setup, using

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from test_train import tiny_model, tiny_world  # noqa: E402

# Two ranks sum their gradients in another order than one process: the trajectories agree
# to float rounding, not bit for bit.
RTOL = 1e-4


def fit(work: Path, *, kill_at: int | None = None, epochs: int = 4) -> None:
    """Train the tiny model (no dropout, so ranks draw no random numbers) into ``work``;
    run in every rank, or in one process. With ``kill_at`` rank 1 SIGKILLs itself at that step."""
    torch.set_num_threads(1)
    setup("cpu")
    split, table = tiny_world()
    torch.manual_seed(0)
    model = pipeline.Retriever(tiny_model(table).model_copy(update={"dropout": 0.0}))
    seqs = pipeline.training_windows(split, table, history=Window(start=0, stop=8), target=Window(start=0, stop=8),
                                     max_history=5)

    def on_step(step: int) -> None:
        if kill_at is not None and step == kill_at and int(os.environ.get("RANK", "0")) == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig(epochs=epochs, batch_size=16, warmup_steps=3, patience=10, valid_fraction=0.1)
    train(model, seqs, table.lookup_table(split.logs.n_items), config=cfg, work_dir=work / "work", out=work / "out",
          show_progress=False, on_step=on_step)


def evaluate(out: Path, *, seed: int = 0) -> None:
    """Score a briefly trained tiny model on part 9 and write the metrics (rank 0)."""
    torch.set_num_threads(1)
    rt = setup("cpu")
    split, table = tiny_world()
    torch.manual_seed(seed)
    model = pipeline.Retriever(tiny_model(table)).eval()
    metrics = pipeline.evaluate(model, table, split, test=Window(start=9, stop=10), allowed=Window(start=0, stop=9),
                                ks=(1, 5, 10), beam=10)
    if rt.is_main:
        out.write_text(json.dumps(metrics))


def launch(call: str, *, ranks: int) -> subprocess.CompletedProcess:
    """Run ``call`` (Python, with this module imported as ``d``) under torchrun."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_distributed as d; from pathlib import Path; {call}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "--no-python", sys.executable, "-c", code]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def weights(work: Path) -> dict[str, torch.Tensor]:
    return load_file(str(work / "out" / "model.safetensors"))


def history(work: Path) -> list[dict]:
    return json.loads((work / "out" / "manifest.json").read_text())["info"]["history"]


def test_two_gloo_ranks_follow_one_process_and_resume_after_a_sigkill(tmp_path):
    fit(tmp_path / "one")
    two = launch(f"d.fit(Path({str(tmp_path / 'two')!r}))", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one_h, two_h = history(tmp_path / "one"), history(tmp_path / "two")
    assert len(one_h) == len(two_h) == 4
    for a, b in zip(one_h, two_h):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=RTOL)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=RTOL)
    one_w, two_w = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(one_w[k], two_w[k], rtol=RTOL, atol=1e-5) for k in one_w)
    manifest = json.loads((tmp_path / "two" / "out" / "manifest.json").read_text())
    assert manifest["info"]["processes"] == 2
    # FLOPs count both ranks: the same tokens as one process.
    one_m = json.loads((tmp_path / "one" / "out" / "manifest.json").read_text())
    assert manifest["compute"]["retriever_tokens"] == one_m["compute"]["retriever_tokens"]

    # Rank 1 killed in the third epoch: torchrun stops the group, nothing final is written.
    killed = launch(f"d.fit(Path({str(tmp_path / 'killed')!r}), kill_at=30)", ranks=2)
    assert killed.returncode != 0
    assert (tmp_path / "killed" / "work" / "state.pt").exists() and not (tmp_path / "killed" / "out").exists()
    resumed = launch(f"d.fit(Path({str(tmp_path / 'killed')!r}))", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = weights(tmp_path / "killed")
    assert all(torch.equal(two_w[k], again[k]) for k in two_w)
    assert history(tmp_path / "killed") == two_h


def test_sharded_evaluation_on_two_ranks_gives_exactly_the_one_process_metrics(tmp_path):
    evaluate(tmp_path / "one.json")
    run = launch(f"d.evaluate(Path({str(tmp_path / 'two.json')!r}))", ranks=2)
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one == two and any(v > 0 for v in one.values())


def test_a_rank_gets_every_world_size_th_row_and_one_process_gets_all():
    rows = np.arange(10)
    shares = [Runtime(rank=r, world_size=3).share(rows) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(10))
    assert np.array_equal(Runtime().share(rows), rows)


def test_train_runs_under_an_explicit_one_process_runtime(tmp_path):
    split, table = tiny_world()
    model = pipeline.Retriever(tiny_model(table))
    seqs = pipeline.training_windows(split, table, history=Window(start=0, stop=8), target=Window(start=0, stop=8),
                                     max_history=5)
    with using(Runtime()):
        result = train(model, seqs, table.lookup_table(split.logs.n_items), show_progress=False,
                       config=TrainConfig(epochs=1, batch_size=16, warmup_steps=1), work_dir=tmp_path / "w",
                       out=tmp_path / "o")
    assert result.manifest.info["processes"] == 1 and result.manifest.info["device"] == "cpu"
