"""Beam-search decode cost against the CPU's bound: analytic FLOPs per level, achieved GFLOP/s
as a share of the fp32 peak measured in the same run, and where the time of a decode goes.

The model is a release's retriever and trie (``--releases``), or by default a randomly
initialised ``cpu``-preset retriever (width 128, 4 layers, 2,000 user buckets, 20 items
of history) over a synthetic 4-level trie the size of Beauty's release: 11,776 items,
256 codes a level, the first three levels drawn at random and the last a collision
suffix (a second item on 3% of the prefixes). Weights do not change the arithmetic; a
trained model's beams spread differently over the trie, which moves the last level's
share only (its beams with a single child cost nothing).

For each beam and batch size: one decode of that many users (median of ``--repeats``),
its FLOPs counted from the shapes the model was called with (prefill over the histories,
then each level's step over its beams and the head over that level's codes; attention
counted over the context each token sees), and the same decode by the code before this
rewrite (``tests/reference_decode.py``, which the tests hold the decode equal to), timed
alternately with it. With ``--releases`` the users are the release's own, their histories
as the server decodes them. ``--profile`` adds torch.profiler tables of a batch-1 and a
batch-32 decode at beam 100. ``--matmuls`` times the decode's matmuls alone at the shapes it
ran them: what the decode would cost, and its share of peak, if nothing else took time.

    python benchmarks/bench_decode.py --profile
    python benchmarks/bench_decode.py --releases runs/beauty-release --beams 100 --batches 1,32
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from freshsid.retriever import decode
from freshsid.retriever.model import Retriever, RetrieverConfig, hash_user
from freshsid.sid.trie import SidTrie

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, SIZES, HISTORY = 11_776, (256, 256, 256, 256), 20


def synthetic(seed: int = 0) -> tuple[Retriever, np.ndarray, SidTrie]:
    """A random ``cpu``-preset retriever over a Beauty-sized 4-level trie (see the module docstring)."""
    rng = np.random.default_rng(seed)
    prefixes = np.unique(rng.integers(0, SIZES[0], (N_ITEMS, 3)), axis=0)
    twice = rng.random(len(prefixes)) < 0.03
    codes = np.concatenate([np.c_[prefixes, np.zeros(len(prefixes), dtype=np.int64)],
                            np.c_[prefixes[twice], np.ones(int(twice.sum()), dtype=np.int64)]])
    codes = codes[rng.permutation(len(codes))][:N_ITEMS]
    torch.manual_seed(seed)
    model = Retriever(RetrieverConfig.preset("cpu", codebook_sizes=SIZES, max_history=HISTORY)).eval()
    return model, codes, SidTrie(codes, SIZES)


def from_release(root: Path) -> tuple[Retriever, np.ndarray, SidTrie, tuple[torch.Tensor, torch.Tensor]]:
    """The current release's retriever, SID lookup and trie, and its users' histories and
    hashed users as the server decodes them (left-padded to the model's history length)."""
    from freshsid.serve.engine import Engine
    from freshsid.serve.release import Releases

    release = Releases(root).load_current()
    table = release.table
    engine = Engine(release, beam=1)
    histories, users = engine.for_users(engine.user_ids())
    served = torch.as_tensor(histories), hash_user(torch.as_tensor(users), release.model.config.user_buckets)
    return release.model.eval(), table.lookup_table(int(table.items.max()) + 1), table.trie(), served


def sample(rng: np.random.Generator, served: tuple[torch.Tensor, torch.Tensor] | None, batch: int, n_items: int,
           buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` histories and hashed users: served users drawn without replacement where a
    release gives them, else random full histories and buckets."""
    if served is not None:
        rows = torch.as_tensor(rng.choice(len(served[0]), batch, replace=batch > len(served[0])))
        return served[0][rows], served[1][rows]
    return (torch.as_tensor(rng.integers(0, n_items, (batch, HISTORY))),
            torch.as_tensor(rng.integers(0, buckets, batch)))


def reference():
    """Today's decode before this rewrite, as the tests keep it (``tests/reference_decode.py``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import reference_decode

    return reference_decode


class FlopCount:
    """Counts the FLOPs of the calls a decode makes to ``model`` (a multiply-add is 2), per level:
    this checkout's (``model.step``) or, given the reference module, the reference's (its ``_step``).

    Per token and layer: 2 (4C^2 + 2CF) for the projections and the MLP, and 4C per
    position attended to (scores and values). Prefill tokens attend causally (position p
    sees p + 1); a step's token sees the padded history and the generated tokens. The head
    is 2C per code of the level scored; the last level's per-child head (a few edges) is
    left out. Embeddings, norms and softmax are ignored. A step that fills in the cache of
    a beam that skipped it counts for the level it would have scored."""

    def __init__(self, model: Retriever, reference_module=None) -> None:
        self.model, self.cfg, self.reference = model, model.config, reference_module
        self.tokens, self.linear, self.attention, self.head = Counter(), Counter(), Counter(), Counter()
        self.rows: list[int] = []  # the rows of each call through the layers (prefill, then steps)
        self.head_rows: list[tuple[int, int]] = []  # (rows, codes) of each head call
        owner = reference_module if reference_module is not None else model
        self._calls = (model.encode, getattr(owner, "_step" if reference_module is not None else "step"),
                       model.level_logits)

    def _step(self, rows: int, done: int, n_prefix: int) -> None:
        c, f, layers = self.cfg.width, self.cfg.ffn, self.cfg.n_layers
        self.tokens[done + 1] += rows
        self.rows.append(rows)
        self.linear[done + 1] += rows * layers * 2 * (4 * c * c + 2 * c * f)
        self.attention[done + 1] += rows * layers * 4 * c * (n_prefix + done + 1)

    def __enter__(self) -> FlopCount:
        encode, step, level_logits = self._calls
        c, f, layers = self.cfg.width, self.cfg.ffn, self.cfg.n_layers

        def counted_encode(tokens):
            n, length = tokens.shape
            self.tokens[0] += n * length
            self.rows.append(n * length)
            self.linear[0] += n * length * layers * 2 * (4 * c * c + 2 * c * f)
            self.attention[0] += n * layers * 4 * c * length * (length + 1) / 2
            return encode(tokens)

        def counted_reference_step(model, tokens, positions, prefix, prefix_valid, generated):
            self._step(tokens.numel(), 0 if generated is None else generated[0][0].shape[3], prefix[0][0].shape[2])
            return step(model, tokens, positions, prefix, prefix_valid, generated)

        def counted_step(tokens, positions, prefix, prefix_bias, generated, slot):
            self._step(tokens.numel(), slot, prefix[0][0].shape[-1])
            return step(tokens, positions, prefix, prefix_bias, generated, slot)

        def counted_logits(hidden, level):
            self.head[level] += hidden.numel() // c * self.cfg.codebook_sizes[level] * 2 * c
            self.head_rows.append((hidden.numel() // c, self.cfg.codebook_sizes[level]))
            return level_logits(hidden, level)

        self.model.encode, self.model.level_logits = counted_encode, counted_logits
        if self.reference is not None:
            self.reference._step = counted_reference_step
        else:
            self.model.step = counted_step
        return self

    def __exit__(self, *exc) -> None:
        if self.reference is not None:
            self.reference._step = self._calls[1]
        for name in ("encode", "step", "level_logits"):
            vars(self.model).pop(name, None)

    @property
    def total(self) -> float:
        return sum(self.linear.values()) + sum(self.attention.values()) + sum(self.head.values())

    def levels(self) -> list[dict[str, float]]:
        return [{"level": d, "tokens": self.tokens[d], "linear_mflop": self.linear[d] / 1e6,
                 "attention_mflop": self.attention[d] / 1e6, "head_mflop": self.head[d] / 1e6}
                for d in range(self.cfg.n_levels)]


def matmuls_ms(count: FlopCount, repeats: int) -> float:
    """ms of the decode's matmuls alone, at the shapes it ran them: for every call through the
    layers (its rows), each layer's q/k/v, output, and two MLP products, and every head call;
    nothing else (no attention, norms, activations, copies, top-k). A decode cannot be faster
    than this on the same BLAS; its FLOPs over this time is the share of peak it would reach
    if everything but the matmuls cost nothing."""
    c, f, layers = count.cfg.width, count.cfg.ffn, count.cfg.n_layers
    shapes = [(rows, n_in, n_out) for rows in count.rows for _ in range(layers)
              for n_in, n_out in ((c, 3 * c), (c, c), (c, f), (f, c))] + [(r, c, k) for r, k in count.head_rows]
    most = max(rows for rows, _, _ in shapes)
    inputs = {n_in: torch.randn(most, n_in) for _, n_in, _ in shapes}
    # laid out as nn.Linear keeps them: (out, in), applied transposed
    weights = {(n_in, n_out): (torch.randn(n_out, n_in), torch.randn(n_out)) for _, n_in, n_out in shapes}

    def run() -> None:
        for rows, n_in, n_out in shapes:
            torch.nn.functional.linear(inputs[n_in][:rows], *weights[n_in, n_out])

    return 1000 * timed(run, repeats)


def peak_gflops(threads: int, n: int = 2048) -> float:
    """fp32 matmul GFLOP/s of an n x n x n product (best of 5) at ``threads``: the bound we compare with."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(6):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def profile(fn, title: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()  # inside: the profiler's own start-up is not a decode's
        for _ in range(3):
            fn()
        wall = (time.perf_counter() - started) / 3 * 1e6
    events = prof.key_averages()
    ops = sum(e.self_cpu_time_total for e in events) / 3
    print(f"\n### {title}: {wall / 1000:.1f} ms a decode under the profiler, {ops / 1000:.1f} ms of it inside "
          f"torch ops, {(wall - ops) / 1000:.1f} ms outside (Python, dispatch); ops by self time:\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", type=Path, help="decode this releases root's current release (default: synthetic)")
    parser.add_argument("--beams", default="100,500")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the process and the peak matmul")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="time the decode before this rewrite (tests/reference_decode.py) alongside")
    parser.add_argument("--compile", action="store_true", help="also time the decode with the step compiled")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of batch-1 and batch-32 decodes")
    parser.add_argument("--matmuls", action="store_true",
                        help="also time the decode's matmuls alone at its shapes (the bound on its share of peak)")
    args = parser.parse_args()

    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads}",
          flush=True)
    peak = peak_gflops(args.threads)
    print(f"fp32 peak (2048^3 matmul, {args.threads} threads): {peak:.0f} GFLOP/s", flush=True)
    model, codes, trie, served = from_release(args.releases) if args.releases else (*synthetic(), None)
    old = reference()
    versions = {"after": lambda m, h, u, beam, batch: decode.beam_search(m, h, u, codes, trie, beam=beam, top_k=args.top_k,
                                                                      batch_size=batch)}
    if args.baseline:
        versions["before"] = lambda m, h, u, beam, batch: old.reference_beam_search(m, h, u, codes, trie, beam=beam,
                                                                                     top_k=args.top_k)
    models = {name: model for name in versions}
    if args.compile:
        versions["compiled"], models["compiled"] = versions["after"], copy.deepcopy(model)
        models["compiled"].compile_step()
        started = time.perf_counter()
        versions["compiled"](models["compiled"], torch.zeros(1, HISTORY, dtype=torch.long), torch.zeros(1), 8, 1)
        print(f"compiling the step: {time.perf_counter() - started:.0f} s", flush=True)
    rng = np.random.default_rng(1)
    rows = []
    for beam in map(int, args.beams.split(",")):
        for batch in map(int, args.batches.split(",")):
            hist, users = sample(rng, served, batch, len(codes), model.config.user_buckets)
            with FlopCount(model, old) as before:
                reference_items, reference_scores = old.reference_beam_search(model, hist, users, codes, trie,
                                                                              beam=beam, top_k=args.top_k)
            with FlopCount(model) as after:
                versions["after"](model, hist, users, beam, batch)
            row = {"beam": beam, "batch": batch, "gflop_before": before.total / 1e9, "gflop": after.total / 1e9,
                   "levels_before": before.levels(), "levels": after.levels()}
            for name, run in versions.items():  # the reference's items (in its order but among ties), scores to 1e-5
                items, scores = run(models[name], hist, users, beam, batch)
                row[f"{name}_same"] = old.same_ranking(items, scores, reference_items, reference_scores)
                row[f"{name}_identical"] = bool(torch.equal(items, reference_items))
            repeats = max(2, min(args.repeats, int(20 * args.repeats / batch)))
            for _ in range(2):  # the versions alternate, so that a change in the machine's load hits each
                for name, run in versions.items():
                    ms = 1000 * timed(lambda: run(models[name], hist, users, beam, batch), repeats)
                    row[f"{name}_ms"] = min(row.get(f"{name}_ms", float("inf")), ms)
            if args.matmuls:
                row["matmuls_ms"] = matmuls_ms(after, repeats)
                row["matmul_gflop"] = (sum(after.linear.values()) + sum(after.head.values())) / 1e9
            row["load"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            rows.append(row)

    print(f"\nfp32 peak {peak:.0f} GFLOP/s ({args.threads} threads); load average at the end {os.getloadavg()}\n")
    print("GFLOP: the arithmetic each version does (before: every beam steps at every level; after: only beams "
          "with a choice). Share of peak: that arithmetic over the time, against the peak above.\n")
    print("| beam | users | GFLOP before | GFLOP after | "
          + " | ".join(f"{n}: ms a user | {n}: share of peak" for n in versions) + " | the reference's items and scores |")
    print("|---:|---:|---:|---:|" + "---:|---:|" * len(versions) + "---|")
    for r in rows:
        cells = " | ".join(f"{r[f'{n}_ms'] / r['batch']:.2f} | "
                           f"{100 * r['gflop_before' if n == 'before' else 'gflop'] / r[f'{n}_ms'] * 1000 / peak:.0f}%"
                           for n in versions)
        same = ", ".join(n + ("" if r[f"{n}_identical"] else " (order among ties)") for n in versions
                         if r[f"{n}_same"]) or "none"
        print(f"| {r['beam']} | {r['batch']} | {r['gflop_before']:.2f} | {r['gflop']:.2f} | {cells} | {same} |")
    if args.matmuls:
        print("\nThe decode's matmuls alone (projections, MLP and heads at the shapes it ran them; nothing else), "
              "against the whole decode (after):\n")
        print("| beam | users | matmuls ms | their GFLOP/s, share of peak | the decode's FLOPs over the matmuls' time, "
              "share of peak | matmuls' share of the decode's time |\n|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['beam']} | {r['batch']} | {r['matmuls_ms']:.2f} | "
                  f"{r['matmul_gflop'] / r['matmuls_ms'] * 1000:.0f}, {100 * r['matmul_gflop'] / r['matmuls_ms'] * 1000 / peak:.0f}% | "
                  f"{100 * r['gflop'] / r['matmuls_ms'] * 1000 / peak:.0f}% | {100 * r['matmuls_ms'] / r['after_ms']:.0f}% |")
    print("\nA lone user's decode over the per-user cost in a batch of 32 (the goal: at most 2):\n")
    for beam in sorted({r["beam"] for r in rows}):
        by_batch = {r["batch"]: r for r in rows if r["beam"] == beam}
        if 1 in by_batch and 32 in by_batch:
            print(f"beam {beam}: " + ", ".join(f"{n} {by_batch[1][f'{n}_ms'] / (by_batch[32][f'{n}_ms'] / 32):.2f}"
                                               for n in versions))
    for first in (r for r in rows if r["batch"] == 1):
        print(f"\nFLOPs of one user's decode at beam {first['beam']}, before / after (MFLOP; tokens: rows the model "
              "ran):\n")
        print("| level | tokens | linear | attention | head |\n|---:|---:|---:|---:|---:|")
        for old_lv, lv in zip(first["levels_before"], first["levels"], strict=True):
            print(f"| {lv['level']} | {old_lv['tokens']:.0f} / {lv['tokens']:.0f} | {old_lv['linear_mflop']:.1f} / "
                  f"{lv['linear_mflop']:.1f} | {old_lv['attention_mflop']:.1f} / {lv['attention_mflop']:.1f} | "
                  f"{old_lv['head_mflop']:.1f} / {lv['head_mflop']:.1f} |")

    if args.profile:
        for batch in (1, 32):
            hist, users = sample(rng, served, batch, len(codes), model.config.user_buckets)
            for name, run in versions.items():
                profile(lambda: run(models[name], hist, users, 100, batch), f"{name}, batch {batch}, beam 100")


if __name__ == "__main__":
    sys.exit(main())
