"""Study: Base with a recency pass — its own window's last part(s) trained again — against Base
and the dense SASRec on the same window, pooled over builds (issue 39).

Issue 39's fixes are chosen on validation. What the measurements point to: the next part's
recall peaks after a few epochs while the in-window loss keeps falling (training longer fits
the base period better and the next worse), and a popularity count of the latest part
(MostPop(gap)) beats Base at Recall@500 on two of three validation splits. Both say the
tail is lost to drift inside the window, so this asks whether weighting the window's most
recent events more helps: Base, already trained, is fine-tuned on the last ``--parts`` of
its own window (histories from part 0, the preset's fine-tune settings unless ``--epochs``
or ``--lr`` say otherwise). It sees no event Base and the dense SASRec did not: the bar
stays like for like. (This is how the pass was chosen, on builds made before the ``cpu``
preset took it; on a build of today's preset Base has had it, and this adds a second.) Each build folder's stages are reused; only the recency pass is
trained (in ``models/base-recent<P>-e<E>-lr<LR>`` of the build) and scored. The folders are
``bench_recipes.py`` validation builds (``--validation``: scored on part 8), or finished
``freshsid experiment`` runs, scored with the config in their ``results.json`` (on the
standard split this reads the test part):

    python benchmarks/bench_recency.py --dataset amazon-beauty --validation --runs runs/inc-beauty/b1,runs/inc-beauty/b2
    python benchmarks/bench_recency.py --dataset amazon-beauty --runs runs/final36-beauty-b1,runs/final36-beauty-b2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_dense_bar import DENSE, GENERATIVE, POPULAR, build_options, builds_of, config_of
from freshsid.artifacts import write_json_atomic
from freshsid.data.registry import load_dataset
from freshsid.data.temporal import Window
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.intervals import compare, read_scores, user_scores
from freshsid.policies import BASE_MODEL, Tokenizer, policy
from freshsid.retriever import pipeline
from freshsid.runtime import repeatable
from summarize_runs import build_means, means_table, verdict_table

KS = (1, 10, 100, 500)


def recency_pass(run: Experiment, parts: int, epochs: int | None, lr: float | None) -> tuple[str, object, dict]:
    """Base fine-tuned on the last ``parts`` of its window, scored on the run's test part:
    (label, per-user scores, compute)."""
    cfg, window = run.config, run.protocol.base
    if not 0 < parts < window.stop - window.start:
        raise SystemExit(f"--parts must be within 1..{window.stop - window.start - 1} (Base's window is {window})")
    tune = cfg.finetune.model_copy(update={k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None})
    run.model(BASE_MODEL)
    table = run.table(Tokenizer.LEGACY)
    name = f"base-recent{parts}-e{tune.epochs}-lr{tune.lr:g}"
    result = pipeline.finetune(run.layout.path(run.layout.model(BASE_MODEL)), run.split, table,
                               target=Window(start=window.stop - parts, stop=window.stop), train_config=tune,
                               out=run.out / "models" / name, show_progress=False)
    examples, ranked = pipeline.rank_test_users(result.model, table, run.split, test=run.protocol.test, allowed=window,
                                                top_k=max(cfg.ks), beam=cfg.beam, max_users=cfg.max_eval_users)
    scores = user_scores(ranked, examples, ks=cfg.ks, base_items=run.split.allowed_items(window),
                         new_items=run.split.new_items(run.protocol.gap))
    return f"Base + last {parts} part(s) again", scores, result.compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    build_options(parser)
    parser.add_argument("--parts", type=int, default=1, help="the last this many parts of Base's window")
    parser.add_argument("--epochs", type=int, help="the pass's epochs (default: the preset's fine-tune)")
    parser.add_argument("--lr", type=float, help="the pass's learning rate (default: the preset's fine-tune)")
    args = parser.parse_args()
    runs, validation = builds_of(parser, args)
    torch.set_num_threads(args.threads)
    logs = load_dataset(args.dataset)
    builds, flops = [], []
    for folder in runs:
        repeatable()
        run = Experiment(logs, config_of(folder, validation, args.threads), folder)
        scores = read_scores(folder, {label: run.evaluate(policy(label)) for label in (GENERATIVE, DENSE, POPULAR)})
        label, scores[label], compute = recency_pass(run, args.parts, args.epochs, args.lr)
        base_flops = run.compute(BASE_MODEL)["retriever_flops"]
        flops.append(compute["retriever_flops"] / base_flops)
        builds.append(scores)
    intervals = compare(builds, [GENERATIVE, DENSE], KS)
    cells = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
    means = build_means(builds, cells)
    split = "validation, part 8" if args.validation else "as each run was split"
    print(f"{args.dataset}, {len(runs)} builds ({split}); the pass costs {np.mean(flops):.3f}x "
          f"Base's training FLOPs\n")
    print(means_table(means, cells))
    print("\n" + verdict_table(intervals, [(label, GENERATIVE), (label, DENSE), (GENERATIVE, DENSE)], cells))
    if args.out:
        write_json_atomic(args.out, {"runs": [str(r) for r in runs], "pass_flops_over_base": flops, "means": means,
                                     "intervals": intervals})


if __name__ == "__main__":
    main()
