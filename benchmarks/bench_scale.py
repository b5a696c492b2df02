"""Scale-out benchmarks (issue: --device, torchrun, million-item catalogs).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py peak      # fp32 / bf16 matmul peak of this machine
    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py step      # training step: fp32 vs bf16 autocast, MFU
    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py ranks     # train(): 1 process x 2 threads vs 2 x 1 (torchrun)
    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py catalog [--levels 4]   # SID build, trie, decoding at 10k / 100k / 1M items
    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py paper     # the paper preset's throughput on this machine

Everything runs on synthetic data of the shapes the presets train on: full 20-item
histories, 3 x 256 codes plus a collision suffix (the ``cpu`` preset's SID shape). MFU
is the analytic training FLOPs per second (``freshsid.retriever.model.flops_per_token``,
x3 for the backward) over the fp32 matmul peak measured here, in the same run. Each
result is printed and written as JSON under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from freshsid.config import RETRIEVER_SIZES, TrainConfig
from freshsid.data.sequences import Sequences
from freshsid.retriever.decode import beam_search
from freshsid.retriever.model import TRAIN_FLOPS_MULTIPLIER, Retriever, RetrieverConfig, build_tokens, flops_per_token
from freshsid.retriever.train import train
from freshsid.runtime import setup
from freshsid.sid.collisions import add_suffix, collision_stats
from freshsid.sid.rqkmeans import RQKMeans
from freshsid.sid.table import SidTable
from freshsid.sid.trie import SidTrie

OUT = Path(__file__).parent / "out"
HISTORY = 20


def save(name: str, record: dict) -> None:
    OUT.mkdir(exist_ok=True)
    record = {**record, "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    (OUT / f"scale-{name}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


def random_codes(n_items: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, tuple[int, ...]]:
    """Random 3 x ``size`` codes plus a collision suffix (rank within the shared prefix)."""
    codes = add_suffix(np.random.default_rng(seed).integers(0, size, (n_items, 3)), suffix_size=n_items).astype(np.int64)
    return codes, (size,) * 3 + (max(4, int(codes[:, -1].max()) + 1),)


def model_config(preset: str, sizes: tuple[int, ...]) -> RetrieverConfig:
    return RetrieverConfig.preset(preset, codebook_sizes=sizes, max_history=HISTORY)


# ----------------------------------------------------------------------------- peak


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 3.0) -> float:
    """Best FLOP/s of an n x n matmul over about ``seconds``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def peak(_: argparse.Namespace) -> None:
    save("peak", {"fp32_gflops": matmul_peak() / 1e9, "bf16_gflops": matmul_peak(torch.bfloat16) / 1e9,
                  "fp32_gflops_1024": matmul_peak(n=1024) / 1e9})


# ----------------------------------------------------------------------------- one training step


def step_rate(cfg: RetrieverConfig, codes: np.ndarray, *, batch: int, bf16: bool, steps: int,
              dropout: float | None = None) -> float:
    """Training tokens/s of forward + backward + AdamW on full-length histories (median of ``steps``);
    ``dropout`` overrides the preset's."""
    torch.manual_seed(0)
    model = Retriever(cfg if dropout is None else cfg.model_copy(update={"dropout": dropout}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    items = rng.integers(0, len(codes), (batch, HISTORY + 1))
    tokens = build_tokens(items, codes, rng.integers(0, cfg.user_buckets, batch), config=cfg)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return tokens.tokens[:, :-1].numel() / statistics.median(times[2:])


def step(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    codes, sizes = random_codes(12_000)
    cfg = model_config(args.preset, sizes)
    flops = TRAIN_FLOPS_MULTIPLIER * flops_per_token(cfg, cfg.n_positions)
    fp32_peak = matmul_peak()
    record = {"preset": args.preset, "batch": args.batch, "fp32_peak_gflops": fp32_peak / 1e9}
    # The preset's dropout (0.1) runs attention through the unfused math path and draws
    # Bernoulli masks; without it the fused kernels run: the third row says what that costs.
    for name, bf16, dropout in (("fp32", False, None), ("bf16_autocast", True, None), ("fp32_no_dropout", False, 0.0)):
        rate = step_rate(cfg, codes, batch=args.batch, bf16=bf16, steps=args.steps, dropout=dropout)
        record[name] = {"tokens_per_s": rate, "gflops": rate * flops / 1e9, "mfu_vs_fp32_peak": rate * flops / fp32_peak}
    save(f"step-{args.preset}", record)


# ----------------------------------------------------------------------------- processes vs threads


def ranks(args: argparse.Namespace) -> None:
    """Launch the same train() once as 1 process x 2 threads and once as 2 processes x 1 thread."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
            cmd = [sys.executable, __file__, "train-once", "--windows", str(args.windows), "--threads", str(threads),
                   "--out", f"{tmp}/{label}"]
            if n > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *cmd[1:]]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            subprocess.run(cmd, check=True, env=env)
            results[label] = json.loads(Path(f"{tmp}/{label}.json").read_text())
    fp32_peak = matmul_peak()
    for record in results.values():
        record["mfu_vs_fp32_peak"] = record["flops_per_s"] / fp32_peak
    save("ranks", {"windows": args.windows, "fp32_peak_gflops": fp32_peak / 1e9, **results,
                   "ratio_2x1_over_1x2": results["2x1"]["tokens_per_s"] / results["1x2"]["tokens_per_s"]})


def train_once(args: argparse.Namespace) -> None:
    """One epoch of the real training loop (cpu preset) on synthetic windows; rank 0 writes its rate."""
    torch.set_num_threads(args.threads)
    rt = setup("cpu")
    codes, sizes = random_codes(12_000)
    rng = np.random.default_rng(0)
    items = rng.integers(0, len(codes), (args.windows, HISTORY + 1))
    seqs = Sequences(np.arange(args.windows), items, np.ones_like(items, dtype=bool))
    torch.manual_seed(0)
    model = Retriever(model_config("cpu", sizes))
    out = Path(args.out)
    config = TrainConfig(epochs=1, batch_size=256, valid_fraction=0.0, warmup_steps=10)
    started = time.perf_counter()
    result = train(model, seqs, codes, config=config, work_dir=out.with_suffix(".work"), out=out, show_progress=False)
    wall = time.perf_counter() - started
    if rt.is_main:
        c = result.compute
        Path(f"{out}.json").write_text(json.dumps({
            "processes": rt.world_size, "threads_per_process": args.threads, "tokens": c["retriever_tokens"],
            "seconds": c["retriever_seconds"], "wall_seconds": wall, "tokens_per_s": c["retriever_tokens"] / c["retriever_seconds"],
            "flops_per_s": c["retriever_flops"] / c["retriever_seconds"]}))


# ----------------------------------------------------------------------------- catalog scale


def catalog(args: argparse.Namespace) -> None:
    """Each catalog size in its own process, so that its peak memory is its own."""
    rows = []
    for n in args.items:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, __file__, "catalog-one", "--n", str(n), "--users", str(args.users),
                            "--levels", str(args.levels), "--out", tmp.name], check=True)
            rows.append(json.loads(Path(tmp.name).read_text()))
    save(f"catalog-{args.levels}levels", {"rows": rows})


def clustered_vectors(n: int, dim: int = 64, n_clusters: int = 2000, seed: int = 0) -> np.ndarray:
    """Item embeddings with structure: a mixture of Gaussian clusters of uneven sizes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    weights = rng.pareto(1.5, n_clusters) + 1
    assign = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    return centers[assign] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)


def catalog_one(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    n = args.n
    vectors = clustered_vectors(n)
    items = np.arange(n)
    # Residual k-means with 256 codes a level (the cpu preset's 3 levels, or more); the
    # suffix level as wide as the largest collision group needs (rounded up to a power of two).
    start = time.perf_counter()
    prefix = RQKMeans(n_levels=args.levels, codebook_size=256).fit_transform(vectors)
    largest = int(collision_stats(prefix, 256)["max_group_size"])
    suffix = 1 << max(2, (largest - 1).bit_length())
    table = SidTable(items=items, codes=add_suffix(prefix, suffix_size=suffix),
                     codebook_sizes=(256,) * args.levels + (suffix,), item_ids=items.astype(str))
    sid_seconds = time.perf_counter() - start
    rss_before_trie = _rss_mib()
    start = time.perf_counter()
    trie = table.trie()
    trie_seconds = time.perf_counter() - start
    trie_bytes = sum(t.numel() * t.element_size() for group in (trie.indptr, trie.edge_codes, trie.edge_keys)
                     for t in group) + trie.leaf_items.numel() * 8
    cfg = model_config("cpu", table.codebook_sizes)
    torch.manual_seed(0)
    model = Retriever(cfg).eval()
    lookup = torch.from_numpy(table.lookup_table(n).astype(np.int64))
    rng = np.random.default_rng(1)
    histories = torch.from_numpy(rng.integers(0, n, (args.users, HISTORY)))
    users = torch.from_numpy(rng.integers(0, cfg.user_buckets, args.users))
    decode = {}
    for beam, batch in ((100, 32), (500, 16)):
        beam_search(model, histories[:batch], users[:batch], lookup, trie, beam=beam, top_k=beam, batch_size=batch)
        start = time.perf_counter()
        beam_search(model, histories, users, lookup, trie, beam=beam, top_k=beam, batch_size=batch)
        decode[f"beam{beam}_users_per_s"] = args.users / (time.perf_counter() - start)
    Path(args.out).write_text(json.dumps({
        "items": n, "sid_shape": list(table.codebook_sizes), "largest_collision_group": largest,
        "sid_build_seconds": sid_seconds, "trie_build_seconds": trie_seconds, "trie_mib": trie_bytes / 2**20,
        "rss_before_trie_mib": rss_before_trie, "peak_rss_mib": _rss_mib(), **decode}))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- paper preset


def paper(args: argparse.Namespace) -> None:
    """The paper preset (width 768, 3 x 512 codes) on this machine: training tokens/s and decoding users/s."""
    torch.set_num_threads(args.threads)
    n = 12_000
    rng = np.random.default_rng(0)
    codes, sizes = random_codes(n, size=512)
    cfg = model_config("paper", sizes)
    flops = TRAIN_FLOPS_MULTIPLIER * flops_per_token(cfg, cfg.n_positions)
    rate = step_rate(cfg, codes, batch=args.batch, bf16=False, steps=args.steps)
    fp32_peak = matmul_peak()
    model = Retriever(cfg).eval()
    trie = SidTrie(codes, sizes)
    histories = torch.from_numpy(rng.integers(0, n, (64, HISTORY)))
    users = torch.from_numpy(rng.integers(0, cfg.user_buckets, 64))
    lookup = torch.from_numpy(codes)
    beam_search(model, histories[:8], users[:8], lookup, trie, beam=100, top_k=100, batch_size=8)
    start = time.perf_counter()
    beam_search(model, histories, users, lookup, trie, beam=100, top_k=100, batch_size=16)
    users_s = 64 / (time.perf_counter() - start)
    save("paper", {"width": cfg.width, "sid_shape": list(sizes), "batch": args.batch, "train_tokens_per_s": rate,
                   "train_gflops": rate * flops / 1e9, "fp32_peak_gflops": fp32_peak / 1e9,
                   "mfu_vs_fp32_peak": rate * flops / fp32_peak, "decode_beam100_users_per_s": users_s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("peak")
    p = sub.add_parser("step")
    p.add_argument("--preset", default="cpu", choices=sorted(RETRIEVER_SIZES))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("ranks")
    p.add_argument("--windows", type=int, default=20_000)
    p = sub.add_parser("train-once")
    p.add_argument("--windows", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("catalog")
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--levels", type=int, default=3)
    p = sub.add_parser("catalog-one")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--levels", type=int, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("paper")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"peak": peak, "step": step, "ranks": ranks, "train-once": train_once, "catalog": catalog,
     "catalog-one": catalog_one, "paper": paper}[args.command](args)


if __name__ == "__main__":
    main()
