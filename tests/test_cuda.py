"""The CUDA paths: device selection, bf16 autocast, pinned host memory, nccl.

Marked ``cuda``: skipped where torch sees no GPU (CI), run by ``benchmarks/gpu_check.sh``
on a GPU machine (``pytest -m cuda``). Each test is seconds on a GPU.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from freshsid.config import TrainConfig
from freshsid.data.sequences import windows
from freshsid.retriever.decode import beam_search
from freshsid.retriever.model import Retriever, RetrieverConfig, build_tokens, load_checkpoint
from freshsid.retriever.train import train
from freshsid.runtime import Runtime, resolve_device, setup, using
from freshsid.sid.collisions import add_suffix
from freshsid.sid.trie import SidTrie

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SIZES = (8, 8, 16)  # two semantic levels and a collision suffix


def _codes(n_items: int = 60) -> np.ndarray:
    """(n_items, 3) unique SIDs: random prefixes, then the collision suffix."""
    return add_suffix(np.random.default_rng(0).integers(0, 8, (n_items, 2)), suffix_size=SIZES[-1]).astype(np.int64)


def _config() -> RetrieverConfig:
    return RetrieverConfig(codebook_sizes=SIZES, width=32, n_layers=2, n_heads=2, ffn=64, user_buckets=10, max_history=6)


def test_auto_and_cuda_resolve_to_the_gpu():
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_setup_enables_tf32_for_bf16_and_not_for_fp32():
    try:
        assert setup("cuda").precision == "bf16" and torch.backends.cuda.matmul.allow_tf32
        assert setup("cuda", precision="fp32").precision == "fp32" and not torch.backends.cuda.matmul.allow_tf32
    finally:
        setup("cpu")


def test_autocast_runs_the_model_in_bf16_and_fp32_when_asked():
    model = Retriever(_config()).cuda()
    tokens = build_tokens(np.array([[0, 1, 2]]), _codes(), np.array([3]), config=model.config).tokens.cuda()
    with using(Runtime(device=torch.device("cuda", 0))) as rt, rt.autocast():
        assert model(tokens)[0].dtype == torch.bfloat16
    with using(Runtime(device=torch.device("cuda", 0), precision="fp32")) as rt, rt.autocast():
        assert model(tokens)[0].dtype == torch.float32


def test_host_batches_travel_through_pinned_memory():
    rt = Runtime(device=torch.device("cuda", 0))
    host = torch.arange(10)
    moved = rt.to_device(host)
    torch.cuda.synchronize()
    assert moved.is_cuda and torch.equal(moved.cpu(), host)


def test_training_on_the_gpu_saves_a_checkpoint_that_loads_and_decodes_on_the_cpu(tmp_path):
    codes = _codes()
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(40), 6)
    items = rng.integers(0, len(codes), len(users))
    seqs = windows(users, items, length=7, is_target=np.ones(len(users), dtype=bool))
    torch.manual_seed(0)
    with using(Runtime(device=torch.device("cuda", 0))):
        result = train(Retriever(_config()), seqs, codes, config=TrainConfig(epochs=2, batch_size=16, warmup_steps=1),
                       work_dir=tmp_path / "work", out=tmp_path / "model", show_progress=False)
    assert result.manifest.info["device"] == "cuda"
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    model, _ = load_checkpoint(tmp_path / "model", expected_shape=SIZES)
    assert next(model.parameters()).device.type == "cpu"
    items_out, _ = beam_search(model, torch.from_numpy(items[:12].reshape(2, 6)), torch.tensor([1, 2]),
                               torch.from_numpy(codes), SidTrie(codes, SIZES), beam=5, top_k=5, batch_size=2)
    assert items_out.shape == (2, 5) and bool((items_out >= 0).all())


def test_nccl_runs_a_one_process_group():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        values = torch.ones(3, device="cuda")
        dist.all_reduce(values)
        assert values.tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()
