"""Retriever speed against a same-size Hugging Face GPT-2.

(a) Training tokens/s: forward + backward + AdamW step on identical token
    batches, our ``Retriever.loss`` vs ``GPT2LMHeadModel`` with its LM loss, both
    as GPT-2 ships (tanh GELU) and with our exact GELU (``hf_same_gelu``). Rounds
    alternate the two models so that load from other processes hits both alike;
    the median round is reported.
(b) Users/s decoding at beam 500 / top 500: our trie-constrained beam search vs
    ``generate(num_beams=500, prefix_allowed_tokens_fn=...)`` constrained by the
    same trie (the callback is memoised per prefix to give it its best shot).

Synthetic data: a random codes table (12k items, 3 x 256 codes + collision
suffix), random weights, full 20-item histories (so no side needs padding).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_retriever.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from freshsid.retriever.decode import beam_search
from freshsid.retriever.model import Retriever, RetrieverConfig, build_tokens
from freshsid.sid.collisions import add_suffix
from freshsid.sid.trie import SidTrie


def synthetic_codes(n_items: int, levels: int, size: int, seed: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Random codes plus a collision-suffix level (rank among items sharing the prefix)."""
    base = np.random.default_rng(seed).integers(0, size, (n_items, levels))
    codes = add_suffix(base, suffix_size=n_items).astype(np.int64)
    return codes, (size,) * levels + (max(int(codes[:, -1].max()) + 1, 4),)


def gpt2_like(cfg: RetrieverConfig, *, activation: str = "gelu_new") -> GPT2LMHeadModel:
    """GPT-2 with our dims; ``gelu_new`` is GPT-2's default, ``gelu`` matches our MLP exactly."""
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.width, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.ffn, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout, activation_function=activation, bos_token_id=0, eos_token_id=None,
            pad_token_id=0,
        )
    )


def hf_loss(model: GPT2LMHeadModel, tokens: torch.Tensor) -> torch.Tensor:
    """GPT-2's own LM loss, on the same inputs (all but the last token) and targets as ours."""
    logits = model(input_ids=tokens[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def bench_training(cfg, codes, *, batch_size, rounds, steps, seed):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, len(codes), (batch_size, cfg.max_history + 1))
    users = rng.integers(0, cfg.user_buckets, batch_size)
    # Loss on every item, as GPT-2's LM loss covers every position.
    batch = build_tokens(items, codes, users, config=cfg, item_weight=np.ones(items.shape))
    ours = Retriever(cfg).train()
    hf, hf_gelu = gpt2_like(cfg).train(), gpt2_like(cfg, activation="gelu").train()
    models = {"ours": ours, "hf": hf, "hf_same_gelu": hf_gelu}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    run = {
        "ours": lambda: ours.loss(batch),
        "hf": lambda: hf_loss(hf, batch.tokens),
        "hf_same_gelu": lambda: hf_loss(hf_gelu, batch.tokens),
    }
    n_tokens = batch.tokens[:, :-1].numel()

    def train_steps(name, n):
        for _ in range(n):
            opts[name].zero_grad(set_to_none=True)
            run[name]().backward()
            opts[name].step()

    for name in run:  # warm-up
        train_steps(name, 2)
    rates = {name: [] for name in run}
    for _ in range(rounds):
        for name in run:
            start = time.perf_counter()
            train_steps(name, steps)
            rates[name].append(steps * n_tokens / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_decoding(cfg, codes, trie, *, beam, n_users, n_hf_users, seed):
    rng = np.random.default_rng(seed + 1)
    histories = rng.integers(0, len(codes), (n_users, cfg.max_history))
    users = rng.integers(0, cfg.user_buckets, n_users)
    torch.manual_seed(seed)
    ours = Retriever(cfg).eval()
    hf = gpt2_like(cfg).eval()
    beam_search(ours, histories[:2], users[:2], codes, trie, beam=beam, top_k=beam)  # warm-up
    start = time.perf_counter()
    beam_search(ours, histories, users, codes, trie, beam=beam, top_k=beam, batch_size=8)
    ours_rate = n_users / (time.perf_counter() - start)

    prompt = build_tokens(histories[:n_hf_users], codes, users[:n_hf_users], config=cfg).tokens
    offsets = torch.tensor(cfg.level_offsets)
    memo: dict[tuple, list[int]] = {}

    def allowed(_batch_id: int, input_ids: torch.Tensor) -> list[int]:
        generated = tuple(input_ids[prompt.shape[1] :].tolist())
        if generated not in memo:
            depth = len(generated)
            if depth >= cfg.n_levels:
                memo[generated] = [0]
            else:
                sid = torch.tensor(generated, dtype=torch.long) - offsets[:depth]
                node = trie.walk(sid[None, :])
                mask = trie.allowed_mask(depth, node)[0]
                memo[generated] = (mask.nonzero().squeeze(1) + offsets[depth]).tolist()
        return memo[generated]

    def hf_generate(rows: torch.Tensor):
        return hf.generate(
            input_ids=rows, attention_mask=torch.ones_like(rows), num_beams=beam, num_return_sequences=beam,
            max_new_tokens=cfg.n_levels, min_new_tokens=cfg.n_levels, do_sample=False,
            prefix_allowed_tokens_fn=allowed, early_stopping=False, pad_token_id=0, eos_token_id=None,
        )

    with torch.inference_mode():
        hf_generate(prompt[:1])  # warm-up
        memo.clear()
        start = time.perf_counter()
        for row in prompt:  # one user per call: batching would multiply the beams held in memory
            out = hf_generate(row[None, :])
        hf_rate = n_hf_users / (time.perf_counter() - start)
    sids = out[:, prompt.shape[1] :] - offsets
    assert bool(trie.is_valid(sids).all()), "HF constraint produced an invalid SID"
    return {"ours": ours_rate, "hf": hf_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared box)")
    parser.add_argument("--beam", type=int, default=500)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--hf-users", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    codes, sizes = synthetic_codes(args.items, 3, 256, args.seed)
    cfg = RetrieverConfig.preset("cpu", codebook_sizes=sizes)
    trie = SidTrie.from_codes(codes, sizes)
    train = bench_training(cfg, codes, batch_size=args.batch_size, rounds=args.rounds, steps=args.steps, seed=args.seed)
    decode = bench_decoding(
        cfg, codes, trie, beam=args.beam, n_users=args.users, n_hf_users=args.hf_users, seed=args.seed
    )
    print(
        json.dumps(
            {
                "bench": "retriever",
                "config": {"preset": "cpu", "codebook_sizes": list(sizes), "items": args.items,
                           "seq_len": cfg.n_positions, "batch_size": args.batch_size, "beam": args.beam,
                           "threads": torch.get_num_threads()},
                "train_tokens_per_s": {k: round(v, 1) for k, v in train.items()},
                "train_ratio": round(train["ours"] / train["hf"], 2),
                "train_ratio_same_gelu": round(train["ours"] / train["hf_same_gelu"], 2),
                "decode_users_per_s": {k: round(v, 3) for k, v in decode.items()},
                "decode_ratio": round(decode["ours"] / decode["hf"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
