"""Retriever training: exact resume after SIGKILL, loss restriction, fit/finetune/eval end to end."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from freshsid.artifacts import read_manifest
from freshsid.data.interactions import from_arrays
from freshsid.data.temporal import TemporalSplit, Window
from freshsid.errors import FreshsidError
from freshsid.retriever import pipeline
from freshsid.retriever.model import RetrieverConfig
from freshsid.retriever.train import TrainConfig, epoch_batches
from freshsid.sid.table import SidTable

HERE = Path(__file__).parent


def tiny_world(seed=0, n_items=40, n_users=30, n_events=900):
    rng = np.random.default_rng(seed)
    # users walk along item chains so there is something to learn
    users = rng.integers(0, n_users, n_events)
    items = (users * 7 + np.arange(n_events) // n_users) % n_items
    logs = from_arrays(users, items, np.arange(n_events) // 3)
    split = TemporalSplit(logs, 10)
    codes = np.stack(np.unravel_index(np.arange(logs.n_items), (4, 4, 4)), axis=1)
    codes = np.column_stack([codes, np.zeros(logs.n_items, int)]).astype(np.int32)
    table = SidTable(items=np.arange(logs.n_items), codes=codes, codebook_sizes=(4, 4, 4, 1), item_ids=logs.item_ids)
    return split, table


def tiny_model(table):
    return RetrieverConfig(codebook_sizes=table.codebook_sizes, width=16, n_layers=1, n_heads=2, ffn=32, user_buckets=8, max_history=5)


def run_fit(work: Path, kill_at: int | None = None):
    """Train a tiny model; with ``kill_at`` the process SIGKILLs itself at that step."""
    torch.set_num_threads(1)
    split, table = tiny_world()

    def kill(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    on_step = None if kill_at is None else kill
    from freshsid.retriever import train as train_mod

    model = pipeline.Retriever(tiny_model(table))
    torch.manual_seed(0)
    model = pipeline.Retriever(tiny_model(table))
    seqs = pipeline.training_windows(split, table, history=Window(start=0, stop=8), target=Window(start=0, stop=8), max_history=5)
    cfg = TrainConfig(epochs=4, batch_size=16, warmup_steps=3, patience=10, valid_fraction=0.1)
    return train_mod.train(model, seqs, table.lookup_table(split.logs.n_items), config=cfg,
                           work_dir=work / "work", out=work / "out", show_progress=False, on_step=on_step)


def test_sigkill_and_resume_gives_identical_weights(tmp_path):
    straight = run_fit(tmp_path / "a")
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_train as t; from pathlib import Path; t.run_fit(Path({str(tmp_path / 'b')!r}), kill_at=30)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (tmp_path / "b" / "work" / "state.pt").exists() and not (tmp_path / "b" / "out").exists()
    resumed = run_fit(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.history == resumed.history
    assert resumed.compute["retriever_steps"] == straight.compute["retriever_steps"]


def test_epoch_batches_cover_rows_once_and_are_seeded():
    lengths = np.random.default_rng(0).integers(1, 20, 1000)
    batches = epoch_batches(lengths, 64, seed=3, epoch=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = epoch_batches(lengths, 64, seed=3, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    other = epoch_batches(lengths, 64, seed=3, epoch=2)
    assert not all(np.array_equal(x, y) for x, y in zip(batches, other))


def test_finetune_windows_carry_loss_only_on_target_events():
    split, table = tiny_world()
    gap = Window(start=8, stop=9)
    seqs = pipeline.training_windows(split, table, history=Window(start=0, stop=8), target=gap, max_history=5)
    span = split.events(gap)
    gap_pairs = set(zip(split.logs.user[span].tolist(), split.logs.item[span].tolist()))
    targets = [(u, i) for u, row, t in zip(seqs.users, seqs.items, seqs.target) for i in row[t]]
    assert targets and all(p in gap_pairs for p in targets)
    assert len(targets) == span.stop - span.start


def test_fit_finetune_evaluate_and_shape_check(tmp_path):
    torch.set_num_threads(1)
    split, table = tiny_world()
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, warmup_steps=2)
    fitted = pipeline.fit(split, table, window=Window(start=0, stop=8), model_config=tiny_model(table),
                          train_config=cfg, out=tmp_path / "base", show_progress=False)
    assert fitted.compute["retriever_flops"] > 0 and fitted.manifest.kind == "retriever"
    tuned = pipeline.finetune(tmp_path / "base", split, table, target=Window(start=8, stop=9),
                              train_config=TrainConfig(epochs=1, batch_size=32, warmup_steps=1), out=tmp_path / "ft",
                              show_progress=False)
    assert tuned.compute["retriever_flops"] < fitted.compute["retriever_flops"]
    metrics = pipeline.evaluate(tuned.model, table, split, test=Window(start=9, stop=10), allowed=Window(start=0, stop=9), ks=(1, 10, 64), beam=64)
    assert set(metrics) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (1, 10, 64)}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # the chain structure is learnable: better than a random ranking of 40 items
    assert metrics["recall@10"] > 0.3
    wrong = SidTable(items=table.items, codes=table.codes, codebook_sizes=(4, 4, 4, 2), item_ids=table.item_ids)
    with pytest.raises(FreshsidError):
        pipeline.finetune(tmp_path / "base", split, wrong, target=Window(start=8, stop=9), train_config=cfg,
                          out=tmp_path / "bad", show_progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_recency_pass_is_the_fine_tune_of_the_fit_on_the_windows_last_part(tmp_path):
    """pipeline.fit with recent_parts: the same weights as fitting, then fine-tuning that
    checkpoint on the window's last part; the record names both windows, its parent is the
    fit, and its compute is both runs'."""
    torch.set_num_threads(1)
    split, table = tiny_world()
    fit_cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, warmup_steps=2, seed=5)
    recent_cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, warmup_steps=1, seed=9)
    window = Window(start=0, stop=8)
    passed = pipeline.fit(split, table, window=window, model_config=tiny_model(table), train_config=fit_cfg,
                          out=tmp_path / "base", show_progress=False, recent_parts=1, recent_config=recent_cfg)
    fitted = read_manifest(tmp_path / ".base.fit")
    assert fitted.info["target_window"] == str(window) and "recent_window" not in fitted.info
    tuned = pipeline.finetune(tmp_path / ".base.fit", split, table, target=Window(start=7, stop=8),
                              train_config=recent_cfg, out=tmp_path / "tuned", show_progress=False)
    for name, weight in tuned.model.state_dict().items():
        assert torch.equal(weight, passed.model.state_dict()[name]), name
    info = passed.manifest.info
    assert info["mode"] == "fit" and info["target_window"] == info["history_window"] == str(window)
    assert info["recent_window"] == str(Window(start=7, stop=8)) and passed.manifest.parent == fitted.fingerprint
    assert pipeline.trained_span(passed.manifest) == window
    assert passed.manifest.compute["retriever_flops"] == pytest.approx(
        fitted.compute["retriever_flops"] + tuned.compute["retriever_flops"])
    for parts in (8, 3):
        with pytest.raises(FreshsidError):
            pipeline.fit(split, table, window=window, model_config=tiny_model(table), train_config=fit_cfg,
                         out=tmp_path / f"bad{parts}", show_progress=False, recent_parts=parts,
                         recent_config=None if parts == 3 else recent_cfg)
        assert not (tmp_path / f"bad{parts}").exists()


def test_lr_schedules_warm_up_then_decay_or_hold():
    from freshsid.retriever.train import lr_factor

    cosine, constant = (lr_factor(TrainConfig(warmup_steps=4, min_lr_ratio=0.1, schedule=s), 100) for s in ("cosine", "constant"))
    assert [cosine(s) for s in range(4)] == [constant(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == pytest.approx(1.0) and cosine(100) == pytest.approx(0.1) and cosine(52) == pytest.approx(0.55)
    assert {constant(s) for s in range(4, 200)} == {1.0}


class _Payload:
    """Unpickling this would create ``target``: what a crafted resume file would try."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_crafted_resume_state_runs_no_code_and_training_starts_afresh(tmp_path, capsys):
    """The resume state is loaded with weights_only: a pickle that would run code when
    loaded (even one whose run id and hash records check out) is refused, nothing runs,
    and training restarts from scratch to the same weights as an untouched run."""
    import json
    import pickle

    from freshsid.artifacts import file_sha256

    straight = run_fit(tmp_path / "a")
    work = tmp_path / "b" / "work"
    work.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (work / "state.pt").write_bytes(pickle.dumps({"run_id": "x", "model": _Payload(marker)}))
    run_id = json.loads((tmp_path / "a" / "work" / "state.json").read_text())["run_id"]
    (work / "state.json").write_text(json.dumps({"run_id": run_id, "sha256": file_sha256(work / "state.pt")}))
    resumed = run_fit(tmp_path / "b")
    assert not marker.exists()
    assert "discarding the resume state" in capsys.readouterr().err
    assert straight.history == resumed.history
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()  # the payload is live: an unguarded load would have run it


def test_a_corrupt_resume_state_is_discarded_with_a_message(tmp_path, capsys):
    run_fit(tmp_path / "a")
    state = tmp_path / "a" / "work" / "state.pt"
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])  # truncated after its hash was recorded
    shutil.rmtree(tmp_path / "a" / "out")
    result = run_fit(tmp_path / "a")
    assert "does not match the hash" in capsys.readouterr().err and len(result.history) == 4


def base_and_moved_table(base: Path):
    """The tiny world, a Base fit on its parts [0, 8) into ``base``, and a table of the same
    shape whose codes moved (each item takes the next one's SID)."""
    torch.set_num_threads(1)
    split, table = tiny_world()
    pipeline.fit(split, table, window=Window(start=0, stop=8), model_config=tiny_model(table),
                 train_config=TrainConfig(epochs=1, batch_size=32, warmup_steps=1), out=base, show_progress=False)
    moved = SidTable(items=table.items, codes=np.roll(table.codes, 1, axis=0), codebook_sizes=table.codebook_sizes,
                     item_ids=table.item_ids)
    return split, table, moved


def test_a_finetune_plan_with_embedding_steps_moves_only_the_token_embeddings_for_those_steps(tmp_path):
    """remap-3-emb's start: while the embedding steps last, every weight but the token
    embeddings keeps the checkpoint's value; the events-weighted remap is recorded."""
    from freshsid.retriever.remap import RemapPlan

    split, table, moved = base_and_moved_table(tmp_path / "base")
    before = load_file(str(tmp_path / "base" / "model.safetensors"))
    cfg = TrainConfig(epochs=1, batch_size=32, warmup_steps=0, valid_fraction=0)
    steps = len(epoch_batches(np.ones(10**3), 32, seed=0, epoch=0))  # more than the one epoch's steps
    plan = RemapPlan(table, 3, weight="events", embedding_steps=steps)
    tuned = pipeline.finetune(tmp_path / "base", split, moved, target=Window(start=8, stop=9), train_config=cfg,
                              out=tmp_path / "ft", show_progress=False, remap=plan)
    after = {k: v.detach().cpu() for k, v in tuned.model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"tok_emb.weight"}
    assert tuned.manifest.info["remap_weight"] == "events" and tuned.manifest.info["embedding_steps"] == steps
    assert plan.key()[-1] == {"weight": "events", "embedding_steps": steps}
    assert RemapPlan(table, 3).key() == ["remap", table.content_hash, 3]  # plain plans key as they always did


def test_replay_and_distillation_keep_the_steps_and_record_their_share_and_compute(tmp_path):
    """remap-3-replay's and remap-3-distill's fine-tunes: replay swaps the configured share
    of the gap's windows for earlier ones (as many windows, as many steps); distillation
    adds Base's forward passes to the recorded FLOPs."""
    from freshsid.retriever.remap import RemapPlan

    split, table, moved = base_and_moved_table(tmp_path / "base")
    cfg = TrainConfig(epochs=2, batch_size=16, warmup_steps=0, valid_fraction=0)
    gap = pipeline.training_windows(split, moved, history=Window(start=0, stop=8), target=Window(start=8, stop=9),
                                    max_history=5)
    tuned = {name: pipeline.finetune(tmp_path / "base", split, moved, target=Window(start=8, stop=9), train_config=cfg,
                                     out=tmp_path / name, show_progress=False, remap=RemapPlan(table, 3, **start))
             for name, start in (("plain", {}), ("replay", {"replay": 0.25}), ("distill", {"distill": 0.5}))}
    info = {name: result.manifest.info for name, result in tuned.items()}
    assert info["replay"]["train_windows"] == info["plain"]["train_windows"] == len(gap)
    assert info["replay"]["replay_windows"] == round(0.25 * len(gap)) > 0 and info["replay"]["replay"] == 0.25
    steps = {name: result.compute["retriever_steps"] for name, result in tuned.items()}
    assert steps["replay"] == steps["plain"] == steps["distill"]
    assert info["distill"]["distill"] == 0.5 and "distill" not in info["plain"]
    teacher = tuned["distill"].compute["retriever_teacher_flops"]
    assert teacher > 0 and "retriever_teacher_flops" not in tuned["plain"].compute
    assert tuned["distill"].compute["retriever_flops"] == pytest.approx(tuned["plain"].compute["retriever_flops"] + teacher)
    assert RemapPlan(table, 3, distill=0.5).key()[-1] == {"weight": "items", "embedding_steps": 0, "distill": 0.5}
