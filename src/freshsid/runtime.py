"""Where the work runs: the device, and under ``torchrun`` the process group.

One :class:`Runtime` per process, set up once by a command's ``--device`` (or an
experiment config's ``device``) and read by training and decoding through
:func:`current`. Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`setup` joins
PyTorch's process group: ``nccl`` on CUDA, ``gloo`` on CPU. Every rank runs the same
program over the same global batches; :meth:`Runtime.share` gives a rank its rows of
each, :meth:`Runtime.gather` collects what the ranks decoded, and only rank 0 writes
files (:attr:`Runtime.is_main`).

On CUDA, matmuls may use TF32 and :meth:`Runtime.autocast` runs the model in bf16; on
the CPU everything stays fp32, so CPU results match earlier runs (bf16 autocast trains
1.32x faster on an AMX CPU, with an unmeasured effect on quality:
``benchmarks/bench_scale.py step``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from freshsid.config import DEVICE_PATTERN
from freshsid.errors import FreshsidError


def resolve_device(spec: str, *, local_rank: int = 0) -> torch.device:
    """The torch device ``spec`` names; under torchrun a bare ``cuda`` is this rank's GPU."""
    if not re.fullmatch(DEVICE_PATTERN, spec):
        raise FreshsidError(f"Unknown device {spec!r}; pass auto, cpu, cuda or cuda:N.")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FreshsidError(f"Device {spec} was asked for but CUDA is not available here; pass --device cpu or auto.")
    index = int(spec.split(":")[1]) if ":" in spec else local_rank
    if index >= torch.cuda.device_count():
        raise FreshsidError(f"Device {spec} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Runtime:
    """This process's device, rank and number of ranks."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    # On CUDA: bf16 autocast (the default) or plain fp32 (TF32 off), to compare the two.
    precision: str = "bf16"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, manifests and output files."""
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch's rows (every world_size-th, from its rank)."""
        return self.shares(rows)[self.rank]

    def shares(self, rows: np.ndarray) -> list[np.ndarray]:
        """Every rank's part of ``rows``, in rank order."""
        return [rows[rank :: self.world_size] for rank in range(self.world_size)]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (unless ``precision`` is fp32); nothing on the CPU (fp32 there)."""
        if self.on_gpu and self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on this device: through pinned memory and without waiting on CUDA."""
        return tensor.pin_memory().to(self.device, non_blocking=True) if self.on_gpu else tensor

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (the tensor itself in one process)."""
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank (rank 0 has written what the others will read)."""
        if self.distributed:
            dist.barrier()


PRECISIONS = ("bf16", "fp32")
_current = Runtime()


def setup(device: str = "auto", *, precision: str = "bf16") -> Runtime:
    """Resolve ``device`` and, when launched by torchrun, join the process group; the
    result is what :func:`current` returns from now on. ``precision`` (CUDA only): bf16
    autocast with TF32 matmuls, or fp32 throughout."""
    if precision not in PRECISIONS:
        raise FreshsidError(f"Unknown precision {precision!r}; pass {' or '.join(PRECISIONS)}.")
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank=local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
        torch.backends.cuda.matmul.allow_tf32 = precision == "bf16"
        torch.backends.cudnn.allow_tf32 = precision == "bf16"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
        # Leave the group before the interpreter exits: a rank that exits with the group's
        # threads alive aborts ("terminate called without an active exception").
        atexit.register(_leave)
    repeatable()
    rank = dist.get_rank() if world > 1 else 0
    _current = Runtime(device=where, rank=rank, world_size=world, precision=precision)
    return _current


def repeatable() -> None:
    """Make this process's results repeatable with the same seed and thread count.

    On the CPU, a multi-threaded ``index_put_`` with accumulation (the backward of
    indexing an embedding table, as SASRec's loss does) adds in thread order, so two runs
    of one config differed; torch's deterministic algorithms sort first. On CUDA some ops
    have no deterministic kernel: there it only warns, and GPU runs are not bit-identical."""
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def _leave() -> None:
    if dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks to it
        dist.destroy_process_group()


def current() -> Runtime:
    """The runtime :func:`setup` chose (one CPU process until it is called)."""
    return _current


@contextlib.contextmanager
def using(runtime: Runtime) -> Iterator[Runtime]:
    """Run a block under ``runtime`` (tests and benchmarks), restoring the previous one."""
    global _current
    previous, _current = _current, runtime
    try:
        yield runtime
    finally:
        _current = previous
