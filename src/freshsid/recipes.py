"""Recipes: how collaborative SIDs are built and recoded, one row each.

A recipe gives settings over a run's SASRec and tokenizer configs (for the legacy build
and the recode alike), says what a recode continues from the legacy build (its SASRec
weights, its tokenizer) instead of starting afresh, and how the fine-tune on the recoded
SIDs starts and trains. :mod:`freshsid.recode` is the step that follows them; only
pydantic is imported here, so configs and the command line's help read the catalogue
without torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from freshsid.errors import FreshsidError

S = TypeVar("S", bound=BaseModel)  # a SASRecConfig (freshsid.config)
T = TypeVar("T", bound=BaseModel)  # a SidConfig
F = TypeVar("F", bound=BaseModel)  # a TrainConfig


class Recipe(BaseModel):
    """How collaborative SIDs are built and recoded: settings over the run's SASRec and
    tokenizer configs (for the legacy build and the recode alike), what the recode
    continues from the legacy build, settings for the recode alone, and how the fine-tune
    on recoded SIDs starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str
    sasrec: dict[str, Any] = {}
    sid: dict[str, Any] = {}
    warm_embeddings: bool = False  # the recode's SASRec starts from the legacy SASRec's weights
    warm_tokenizer: bool = False  # the recode's tokenizer starts from the legacy tokenizer's state
    recode_sasrec: dict[str, Any] = {}
    recode_sid: dict[str, Any] = {}
    # Share of the items both tables code that take their refreshed (aligned) code: those whose
    # neighbourhood in the embedding space moved most; the others keep their legacy SID.
    # 1 moves every item (the paper's alignment).
    move_share: float = Field(1.0, gt=0.0, le=1.0)
    # Drift-confident re-coding (after DACT, arXiv 2603.29705), instead of a fixed share: an
    # item both tables code takes its refreshed code only when its refreshed vector lies
    # farther from its legacy first-level code's centroid than (1 + drift_margin) times its
    # distance to the nearest other one (centroids of the refreshed vectors, grouped by legacy
    # code) and it has at least drift_min_events events in the window's last part; the share
    # that moves is measured (freshsid.recode.drifted_items). None: off.
    drift_margin: float | None = Field(None, ge=0.0)
    drift_min_events: int = Field(1, ge=0)
    # Levels whose code embeddings a fine-tune on recoded SIDs first carries over from the
    # legacy codes of each code's items (freshsid.retriever.remap): the first N, or "all"
    # semantic levels; 0 carries none (the paper's plain alignment).
    remap_levels: Annotated[int, Field(ge=0)] | Literal["all"] = 0
    # How a remapped code's row mixes the legacy rows: each of its items once ("items"), or
    # each by its events in the fine-tune's window plus one ("events": a code that merged
    # items leans towards the ones users pick).
    remap_weight: Literal["items", "events"] = "items"
    # The first optimiser steps of a remapping fine-tune (above) update the token embeddings
    # only (within the same budget): the carried rows settle before the network moves.
    embedding_steps: int = Field(0, ge=0)
    # What a remapped code's row is made from: its items' legacy codes at that level
    # ("codes"), or their whole legacy prefixes ("prefixes": each level carries what the
    # item's legacy prefix holds beyond the refreshed rows of its earlier levels, so items a
    # refreshed code merged start apart at the next level; freshsid.retriever.remap).
    remap_from: Literal["codes", "prefixes"] = "codes"
    # The remapping fine-tune's loss adds this weight times the KL divergence from Base's
    # per-level code distributions, mapped onto the refreshed codes, annealed linearly to 0
    # over the fine-tune (freshsid.retriever.distill). 0: no distillation.
    distill: float = Field(0.0, ge=0.0)
    # Share of the remapping fine-tune's windows drawn from the parts before its target
    # window (replay), the rest from the target window: as many windows as without replay,
    # so the same optimiser steps and about the same FLOPs (freshsid.data.sequences.mixed).
    replay: float = Field(0.0, ge=0.0, lt=1.0)
    # Settings over the run's fine-tune TrainConfig for the fine-tunes on the recoded SIDs
    # (a refresh's; FT-old, incremental coding and Full+FT keep the run's).
    finetune: dict[str, Any] = {}
    # Incremental coding (a frozen vocabulary): where the vectors of the new items come from,
    # so that the frozen tokenizer reads them in the space it was fit on. "fold-in": the
    # build's SASRec frozen, only the new items' rows trained on the window; "procrustes":
    # the SASRec continued on the window, its vectors mapped onto the build's space by the
    # orthogonal map fit on the items both code; "continued": the continued SASRec's vectors
    # as they are (the space drifts away from the tokenizer's: the weak reference).
    incremental: Literal["fold-in", "procrustes", "continued"] = "fold-in"

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.drift_margin is not None and self.move_share < 1:
            raise ValueError("drift_margin and move_share < 1 both choose which items move; set one of them")
        if not self.remap_levels and (self.distill or self.replay or self.remap_from != "codes"):
            raise ValueError("distill, replay and remap_from apply to a fine-tune that remaps; set remap_levels")
        return self

    def recode_settings(self) -> dict[str, Any]:
        """What a recode's SIDs depend on (a cache key): recipes that differ only in their
        name or in how the fine-tune starts share one recode."""
        settings = self.model_dump(exclude={"name", "description", *FINETUNE_START})
        if self.drift_margin is None:  # (keyed only when set: the recodes cached before it keep their keys)
            del settings["drift_margin"], settings["drift_min_events"]
        return settings

    def carried_levels(self, n_levels: int) -> int:
        """How many levels of code embeddings a remap carries on SIDs of ``n_levels`` semantic levels."""
        return n_levels if self.remap_levels == "all" else self.remap_levels

    def finetune_start(self) -> dict[str, Any]:
        """How a remapping fine-tune on this recipe's recoded SIDs starts, beyond the levels
        it carries, as ``freshsid.retriever.remap.RemapPlan``'s keyword arguments: only the
        settings that differ from the defaults (none for the recipes that predate them)."""
        start = self.model_dump(include={"remap_weight", "embedding_steps", "remap_from", "distill", "replay"},
                                exclude_defaults=True)
        return {_PLAN_NAMES.get(name, name): value for name, value in start.items()}

    def finetune_config(self, config: F) -> F:
        """The TrainConfig of a fine-tune on this recipe's recoded SIDs, from the run's."""
        return _override(config, self.finetune)

    def legacy_configs(self, sasrec: S, sid: T) -> tuple[S, T]:
        """The SASRec and tokenizer configs of the legacy build under this recipe."""
        return _override(sasrec, self.sasrec), _override(sid, self.sid)

    def recode_configs(self, sasrec: S, sid: T) -> tuple[S, T]:
        """The SASRec and tokenizer configs of the recode under this recipe."""
        legacy_sasrec, legacy_sid = self.legacy_configs(sasrec, sid)
        return _override(legacy_sasrec, self.recode_sasrec), _override(legacy_sid, self.recode_sid)


# Recipe fields no recode depends on
FINETUNE_START = ("remap_levels", "remap_weight", "embedding_steps", "remap_from", "distill", "replay", "finetune")
_PLAN_NAMES = {"remap_weight": "weight", "remap_from": "basis"}  # Recipe field -> RemapPlan field


def _override(config: BaseModel, changes: dict[str, Any]) -> Any:
    return type(config).model_validate({**config.model_dump(), **changes}) if changes else config


# Beyond the paper: move codes only where behaviour moved. The SASRec continues for a
# fixed small budget (no early stopping into a weaker model), the tokenizer continues
# from the legacy codebooks, then alignment.
_STABLE = Recipe(name="stable", warm_embeddings=True, warm_tokenizer=True,
                 recode_sasrec={"max_epochs": 3, "valid_users": 0}, recode_sid={"warm_epochs": 10},
                 description="SASRec continues 3 epochs from the legacy one, the tokenizer 10 epochs from the legacy "
                             "codebooks")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="cold", description="a new SASRec and a new tokenizer on the recode's window (the reference protocol)"),
        Recipe(name="cold-remap", remap_levels="all",
               description="cold, then the fine-tune starts with the code embeddings of every level carried from "
                           "the legacy codes of their items"),
        Recipe(name="warm", warm_embeddings=True, warm_tokenizer=True,
               description="SASRec continues from the legacy one (early-stopped), the legacy tokenizer codes its "
                           "vectors (sid.warm_epochs of further fitting)"),
        _STABLE,
        # Further: after the stable recode only the share of items whose 10 nearest
        # neighbours changed most take their aligned code; the others keep their legacy SID.
        *(_STABLE.model_copy(update={"name": f"sticky-{round(share * 100)}", "move_share": share,
                                     "description": f"stable, then only the {share:.0%} of items whose neighbourhood "
                                                    "moved most take their new code"})
          for share in (0.25, 0.5)),
        # Further: the warm start's code embeddings follow the items onto their recoded SIDs.
        *(_STABLE.model_copy(update={"name": f"remap-{levels}", "remap_levels": levels,
                                     "description": f"stable, then the fine-tune starts with the code embeddings of "
                                                    f"the first {levels} level(s) carried from the legacy codes of "
                                                    "their items"})
          for levels in (1, 3)),
        # remap-3 with a merged code leaning to its busy items, or with the carried rows
        # settling alone before the network moves (the cpu preset's learning-rate warm-up
        # is 10 steps).
        _STABLE.model_copy(update={"name": "remap-3-events", "remap_levels": 3, "remap_weight": "events",
                                   "description": "remap-3, each item weighted by its events in the fine-tune's "
                                                  "window (plus one) when a code's row is carried"}),
        _STABLE.model_copy(update={"name": "remap-3-emb", "remap_levels": 3, "embedding_steps": 20,
                                   "description": "remap-3, the fine-tune's first 20 optimiser steps updating the token "
                                                  "embeddings only"}),
        # Both: only the items whose neighbourhood moved most change code, and the
        # embeddings follow them.
        _STABLE.model_copy(update={"name": "sticky-25-remap-3", "move_share": 0.25, "remap_levels": 3,
                                   "description": "sticky-25, then the fine-tune starts with every level's code "
                                                  "embeddings carried as in remap-3"}),
        # Towards a refresh that wins at the head too, each on remap-3: Base's per-level code
        # distributions distilled through the remap; base-window windows replayed; whole
        # prefixes carried, so merged items start apart.
        _STABLE.model_copy(update={"name": "remap-3-distill", "remap_levels": 3, "distill": 1.0,
                                   "description": "remap-3, the fine-tune's loss plus the KL divergence from Base's "
                                                  "per-level code distributions mapped onto the refreshed codes "
                                                  "(weight 1, annealed linearly to 0)"}),
        _STABLE.model_copy(update={"name": "remap-3-replay", "remap_levels": 3, "replay": 0.25,
                                   "description": "remap-3, a quarter of the fine-tune's windows drawn from the parts "
                                                  "before the gap (as many windows in all: the same steps)"}),
        _STABLE.model_copy(update={"name": "remap-3-prefix", "remap_levels": 3, "remap_from": "prefixes",
                                   "description": "remap-3, each code's row carried from its items' whole legacy "
                                                  "prefixes (beyond the refreshed rows of their earlier levels)"}),
        # Only the items whose collaborative evidence moved with confidence take new codes
        # (how many is measured, recorded under the table's stats), and the embeddings follow.
        _STABLE.model_copy(update={"name": "drift-remap-3", "remap_levels": 3, "drift_margin": 0.1,
                                   "drift_min_events": 2,
                                   "description": "stable, then only the items nearer another legacy first-level "
                                                  "code's centroid than their own (by 10%) with 2+ events in the "
                                                  "newest part take their new code; remap-3's fine-tune"}),
        # The paper's plain alignment at its own fine-tune budget and schedule: 30 epochs at a
        # constant 1e-4, no warm-up, no early stop (the best validation epoch is kept).
        Recipe(name="cold-ft30", finetune={"epochs": 30, "lr": 1e-4, "schedule": "constant", "warmup_steps": 0,
                                           "patience": 30},
               description="cold, then the paper's fine-tune on the recoded SIDs: 30 epochs at a constant lr 1e-4"),
        # The reference implementation's embeddings and tokenizer (sizes stay the preset's).
        Recipe(name="paper", sasrec={"loss": "bce", "sequences": "last", "learning_rate": 1e-4, "n_layers": 2,
                                     "n_heads": 2, "dropout": 0.3, "max_length": 20, "valid_users": 0,
                                     "max_epochs": 200},
               sid={"tokenizer": "rqkmeans", "epochs": None},
               description="SASRec with BCE and one negative on each user's last 21 items, 200 epochs at lr 1e-4; "
                           "residual k-means on the raw vectors; a cold recode"),
    )
}


def recipe(name: str) -> Recipe:
    """The named recipe."""
    if name not in RECIPES:
        raise FreshsidError(f"Unknown recipe {name!r}; use one of {', '.join(RECIPES)}.")
    return RECIPES[name]
