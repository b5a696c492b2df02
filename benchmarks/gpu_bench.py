"""The retriever at a preset's sizes on a real dataset, on whatever device is given:
training throughput, MFU against the device's measured bf16 matmul peak, peak memory,
decoding time and quality, once in bf16 autocast and once in fp32 (TF32 off), from the
same seed. ``benchmarks/gpu_check.sh`` runs it on a CUDA machine (and, with --dry-run,
at tiny sizes on the CPU in the test suite).

    PYTHONPATH=src python benchmarks/gpu_bench.py --dataset amazon-beauty --preset paper --device cuda \
        --epochs 4 --out benchmarks/out/gpu

SIDs: ``--sids DIR`` (a SidTable of the preset's shape, e.g. built beforehand on another
machine) or, by default, collaborative SIDs built here on the base window with the
preset's SASRec and tokenizer settings. Writes ``gpu-bench.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from freshsid.config import preset
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import TemporalSplit
from freshsid.retriever import pipeline
from freshsid.retriever.model import TRAIN_FLOPS_MULTIPLIER, RetrieverConfig, flops_per_token
from freshsid.runtime import Runtime, setup, using
from freshsid.sid.table import SidTable


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul on ``device`` (mean of ``repeats`` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def run_precision(precision: str, *, rt: Runtime, split: TemporalSplit, table: SidTable, args, config,
                  out: Path, peak: float) -> dict:
    """Fit from scratch on base in ``precision``, then decode the test users; one record."""
    fit = config.fit.model_copy(update={"epochs": args.epochs, "patience": args.epochs,
                                        "batch_size": args.batch_size or config.fit.batch_size})
    model_config = RetrieverConfig.preset(config.retriever, codebook_sizes=table.codebook_sizes,
                                          max_history=config.protocol.max_history)
    on_gpu = rt.device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = precision == "bf16"
    torch.backends.cudnn.allow_tf32 = precision == "bf16"
    with using(Runtime(device=rt.device, precision=precision)):
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(rt.device)
        started = time.perf_counter()
        result = pipeline.fit(split, table, window=config.protocol.base, model_config=model_config, train_config=fit,
                              out=out / "model", show_progress=False)
        synchronize(rt.device)
        train_seconds = time.perf_counter() - started
        peak_memory = torch.cuda.max_memory_allocated(rt.device) if on_gpu else 0
        started = time.perf_counter()
        metrics = pipeline.evaluate(result.model, table, split, test=config.protocol.test, allowed=config.protocol.base,
                                    ks=config.ks, beam=args.beam, max_users=args.max_eval_users)
        synchronize(rt.device)
        eval_seconds = time.perf_counter() - started
    compute = result.compute
    flops_token = TRAIN_FLOPS_MULTIPLIER * flops_per_token(model_config, model_config.n_positions)
    tokens_s = compute["retriever_tokens"] / max(compute["retriever_seconds"], 1e-9)
    return {"precision": precision, "epochs_run": len(result.history), "steps": int(compute["retriever_steps"]),
            "tokens": compute["retriever_tokens"], "train_seconds": train_seconds,
            "tokens_per_s": tokens_s, "train_tflops": tokens_s * flops_token / 1e12,
            "mfu_vs_bf16_peak": tokens_s * flops_token / peak, "peak_memory_gib": peak_memory / 2**30,
            "history": result.history, "eval_seconds": eval_seconds, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sids", type=Path, default=None, help="a SidTable of the preset's shape (else built here)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=None, help="training windows a step (default: the preset's)")
    parser.add_argument("--beam", type=int, default=500)
    parser.add_argument("--max-eval-users", type=int, default=None)
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="gpu-bench.json", help="the result file's name under --out")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = setup(args.device)
    config = preset(args.preset)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bf16_peak = matmul_peak(rt.device, torch.bfloat16, 8192 if rt.device.type == "cuda" else 1024)
    fp32_peak = matmul_peak(rt.device, torch.float32, 8192 if rt.device.type == "cuda" else 1024)
    started = time.perf_counter()
    split = TemporalSplit(load_dataset(args.dataset), config.protocol.n_parts)
    if args.sids is not None:
        table = SidTable.load(args.sids)
    else:
        from freshsid.recode import build_collab_sids  # (needs faiss, which --sids avoids)

        table = build_collab_sids(split, config.protocol.base, sasrec=config.sasrec, sid=config.sid, seed=config.seed,
                                  progress=False).table
    sid_seconds = time.perf_counter() - started
    record = {
        "dataset": args.dataset, "preset": args.preset, "device": str(rt.device),
        "device_name": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "beam": args.beam,
        "max_eval_users": args.max_eval_users, "epochs": args.epochs,
        "batch_size": args.batch_size or config.fit.batch_size, "sid_shape": list(table.codebook_sizes),
        "sids": str(args.sids) if args.sids else "built here", "data_and_sid_seconds": sid_seconds,
        "bf16_peak_tflops": bf16_peak / 1e12, "fp32_peak_tflops": fp32_peak / 1e12, "runs": {},
    }
    for precision in args.precisions.split(","):
        with tempfile.TemporaryDirectory() as work:  # checkpoints are not kept
            record["runs"][precision] = run_precision(precision, rt=rt, split=split, table=table, args=args,
                                                      config=config, out=Path(work), peak=bf16_peak)
        (out / args.name).write_text(json.dumps(record, indent=2))
        run = record["runs"][precision]
        print(f"{precision}: {run['steps']} steps, {run['tokens_per_s']:,.0f} tok/s, MFU {run['mfu_vs_bf16_peak']:.1%} "
              f"of bf16 peak, {run['peak_memory_gib']:.2f} GiB, train {run['train_seconds']:.1f} s, eval "
              f"{run['eval_seconds']:.1f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in run["metrics"].items()
                                                            if k.split("@")[1] in {"100", "500", "50"}), flush=True)
    if {"bf16", "fp32"} <= set(record["runs"]):
        bf, fp = record["runs"]["bf16"]["metrics"], record["runs"]["fp32"]["metrics"]
        record["bf16_minus_fp32"] = {k: bf[k] - fp[k] for k in bf}
        record["bf16_speedup"] = record["runs"]["bf16"]["tokens_per_s"] / record["runs"]["fp32"]["tokens_per_s"]
    (out / args.name).write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
