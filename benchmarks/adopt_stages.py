"""Carry what a recipe does not change (legacy build, Base, FT-old) into a run of another recipe.

The recipes ``cold``, ``warm`` and ``stable`` share the legacy build (SASRec embeddings
and tokenizer on base) and so Base; only the refresh and what follows differ. This
copies a finished run's ``legacy`` folder, Base and FT-old (with their evaluations)
into a new run folder and records them in its stage cache under the new config's keys, after checking that
the legacy SASRec, tokenizer, retriever, fit, fine-tune, protocol and evaluation settings
of the two configs agree (fields added since the old run count as equal at their defaults).
Then ``freshsid experiment --config NEW/config.json --out NEW`` builds only what the new
recipe changes.

    python benchmarks/adopt_stages.py --dataset amazon-beauty --from runs/fix-beauty \\
        --out runs/final-beauty --recipe stable --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from freshsid.artifacts import write_json_atomic
from freshsid.config import ExperimentConfig, load_config
from freshsid.data.registry import load_dataset
from freshsid.evaluate.experiment import Experiment
from freshsid.evaluate.stages import StageCache
from freshsid.policies import BASE_MODEL, policy
from freshsid.recipes import recipe

SHARED = ("sasrec", "sid", "retriever", "fit", "finetune", "protocol", "ks", "max_eval_users", "seed", "beam")


def check_same_legacy(old: ExperimentConfig, new: ExperimentConfig) -> None:
    """Refuse unless both configs build the same legacy SIDs and Base."""
    differ = [name for name in SHARED if getattr(old, name) != getattr(new, name)]
    if recipe(old.recipe).legacy_configs(old.sasrec, old.sid) != recipe(new.recipe).legacy_configs(new.sasrec, new.sid):
        differ.append("recipe legacy settings")
    if differ:
        raise SystemExit(f"the runs' configs differ in {', '.join(differ)}; their legacy builds are not the same")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a finished experiment run")
    parser.add_argument("--out", type=Path, required=True, help="the new run folder (must not exist)")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--policies", default=None, help="comma-separated (default: the old run's)")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists")
    old = load_config(args.source / "results.json")
    update = {"recipe": args.recipe, "finetune_seeds": tuple(int(s) for s in args.seeds.split(","))}
    if args.policies:
        update["policies"] = tuple(args.policies.split(","))
    new = old.model_copy(update=update)
    new = ExperimentConfig.model_validate(new.model_dump())
    check_same_legacy(old, new)

    experiment = Experiment(load_dataset(args.dataset), new, args.out, show_progress=False)
    layout, seeds = experiment.layout, new.finetune_seeds
    base, stale = policy("Base"), policy("FT-old")
    # What the recipe does not touch: the legacy build, Base, and FT-old (legacy SIDs, Base
    # fine-tuned with the same settings), each with its evaluation.
    folders = [layout.legacy, layout.model(BASE_MODEL), *(layout.model(stale.model, s) for s in seeds)]
    # An evaluation is carried with its per-user scores; one made before they were kept is redone.
    records = [stage for stage in [layout.evaluation(base), *(layout.evaluation(stale, s) for s in seeds)]
               if (args.source / stage).with_suffix(".users.parquet").exists()]
    for stage in folders:
        shutil.copytree(args.source / stage, args.out / stage)
    for stage in records:
        for suffix in (".json", ".users.parquet"):
            target = (args.out / stage).with_suffix(suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2((args.source / stage).with_suffix(suffix), target)
    # Record the copies under the keys the new config gives them: ask the cache for each
    # stage with a build that refuses to run, so only what was copied can answer.
    stages = set(folders + records)
    adopted: dict[str, str] = {}

    def refuse(folder: Path):
        raise SystemExit(f"{folder} did not load; nothing adopted")

    class Adopting(StageCache):
        def get(self, stage, key, build, load, *, former=None):  # type: ignore[override]
            if stage in stages and stage not in adopted:
                adopted[stage] = key
                self.adopt(stage, key)
                return super().get(stage, key, refuse, load)
            return super().get(stage, key, build, load, former=former)

    experiment.cache = Adopting(layout, log=print)
    experiment.evaluate(base)
    experiment.evaluate(stale)
    if set(adopted) != stages:
        raise SystemExit(f"not adopted: {sorted(stages - set(adopted))}")
    write_json_atomic(args.out / "ADOPTED.json", {"from": str(args.source), "stages": sorted(stages)})
    write_json_atomic(args.out / "config.json", new.model_dump(mode="json"))
    print(f"adopted {', '.join(sorted(stages))} from {args.source} into {args.out}")


if __name__ == "__main__":
    main()
