"""The policies compared by the experiment, each defined once, as data.

A policy is a model and the items it may recommend. A model is either a generative
retriever (:class:`ModelSpec`: a tokenizer, i.e. which SidTable it speaks, a starting
point and a training window: from scratch it is fit on that window; from a checkpoint
it is fine-tuned with the loss on that window's events, histories from part 0) or a
baseline that speaks no SIDs (:class:`Baseline`: item popularity in a window, or the
dense SASRec behind the collaborative embeddings). Two policies with the same model
share it (FT-aligned+new decodes FT-aligned (hungarian)'s model over more items). The
runner builds what a row says, the report reads the rows, the tests check the
artifacts against them; adding a policy is one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

WindowName = Literal["base", "gap", "base+gap"]


class Tokenizer(StrEnum):
    """Which SidTable a model speaks."""

    LEGACY = "legacy"  # fit on base
    # the legacy table, plus the items first seen in the gap coded by the legacy tokenizer
    # as it is (incremental coding: no legacy item's SID moves)
    LEGACY_NEW = "legacy+new"
    REFRESHED = "refreshed"  # refit on base+gap as the recipe says, codes as the refit numbers them
    # a rebuild: a new SASRec and tokenizer trained on base+gap, whatever the recipe (the
    # legacy build's settings on the longer window; what a team rebuilding from scratch fields)
    REBUILT = "rebuilt"
    ALIGNED_GREEDY = "aligned-greedy"  # refreshed, relabelled onto legacy greedily
    ALIGNED_HUNGARIAN = "aligned-hungarian"  # refreshed, relabelled onto legacy exactly

    @property
    def alignment(self) -> str | None:
        """The alignment method of an aligned tokenizer, else None."""
        return self.value.removeprefix("aligned-") if self.value.startswith("aligned-") else None


class Start(StrEnum):
    SCRATCH = "scratch"
    BASE = "base"  # Base's checkpoint (a warm start)
    FULL = "full"  # Full's checkpoint (the recency control: Full, then the gap fine-tune)


class ComputeKind(StrEnum):
    BASELINE = "baseline"  # no retriever: popularity counts or the dense SASRec
    BASE = "base"  # the legacy build everyone starts from
    FINETUNE = "finetune"  # a warm-start fine-tune: what a refresh costs
    FULL = "full"  # a rebuild from scratch


@dataclass(frozen=True)
class ModelSpec:
    tokenizer: Tokenizer
    start: Start
    train: WindowName  # fit window (from scratch) or target window (fine-tune)
    # A fine-tune that first carries the checkpoint's code embeddings onto the new codes
    # (freshsid.retriever.remap; the recipe's remap_levels, which must name some: freshsid.recode.remap).
    remap: bool = False

    @property
    def slug(self) -> str:
        """The model's stage name, derived from its definition."""
        name = f"{self.start}-{self.tokenizer}-{self.train}".replace("+", "-")
        return f"{name}-remap" if self.remap else name


@dataclass(frozen=True)
class Baseline:
    """A model that speaks no SIDs: ``mostpop`` ranks items by their count in ``train``;
    ``sasrec`` is the dense SASRec trained on ``train`` (the refresh's, same recipe),
    exact top-K over the allowed items."""

    kind: Literal["mostpop", "sasrec"]
    train: WindowName

    @property
    def slug(self) -> str:
        return f"{self.kind}-{self.train}".replace("+", "-")


@dataclass(frozen=True)
class Policy:
    label: str
    model: ModelSpec | Baseline
    allowed: WindowName  # decoding may return the items seen in this window
    compute: ComputeKind
    description: str

    @property
    def slug(self) -> str:
        return self.label.lower().replace(" (", "-").replace("(", "-").replace(")", "").replace("+", "-plus-").replace(" ", "-")

    @property
    def finetuned(self) -> bool:
        return isinstance(self.model, ModelSpec) and self.model.start is not Start.SCRATCH

    @property
    def baseline(self) -> bool:
        return isinstance(self.model, Baseline)


BASE_MODEL = ModelSpec(Tokenizer.LEGACY, Start.SCRATCH, "base")
FULL_MODEL = ModelSpec(Tokenizer.REBUILT, Start.SCRATCH, "base+gap")
_GAP = "gap"
_REMAP = ModelSpec(Tokenizer.ALIGNED_HUNGARIAN, Start.BASE, _GAP, remap=True)

# DESIGN.md, "Policies compared". Every refresh row fine-tunes Base on the gap with the same
# settings; the FT-aligned rows are the paper's plain alignment (no remap), the "refresh
# with remap" rows what the remap recipes add on top (alignment then adds nothing: a
# remapped code's row depends on the set of its items, not on its label).
POLICIES: tuple[Policy, ...] = (
    Policy("MostPop(gap)", Baseline("mostpop", _GAP), "base", ComputeKind.BASELINE,
           "items ranked by their count in the gap, base items only"),
    Policy("MostPop(gap)+new", Baseline("mostpop", _GAP), "base+gap", ComputeKind.BASELINE,
           "items ranked by their count in the gap, items first seen in gap allowed"),
    Policy("SASRec", Baseline("sasrec", "base+gap"), "base+gap", ComputeKind.BASELINE,
           "the dense SASRec behind Full's SIDs (trained anew on base+gap until its validation stops "
           "improving), exact top-K"),
    Policy("Base", BASE_MODEL, "base", ComputeKind.BASE, "legacy SIDs, retriever trained on base"),
    Policy("FT-old", ModelSpec(Tokenizer.LEGACY, Start.BASE, _GAP), "base", ComputeKind.FINETUNE,
           "stale legacy SIDs, Base fine-tuned on gap"),
    Policy("FT-old+new", ModelSpec(Tokenizer.LEGACY_NEW, Start.BASE, _GAP), "base+gap", ComputeKind.FINETUNE,
           "legacy SIDs kept; items first seen in gap coded by the legacy tokenizer from vectors in the legacy "
           "space (the recipe's incremental way, fold-in by default); Base fine-tuned on gap"),
    Policy("FT-new", ModelSpec(Tokenizer.REFRESHED, Start.BASE, _GAP), "base", ComputeKind.FINETUNE,
           "SIDs refit on base+gap (unaligned, no remap), Base fine-tuned on gap"),
    Policy("FT-aligned (greedy)", ModelSpec(Tokenizer.ALIGNED_GREEDY, Start.BASE, _GAP), "base", ComputeKind.FINETUNE,
           "refit SIDs aligned to legacy (greedy; the paper's alignment, no remap), Base fine-tuned on gap"),
    Policy("FT-aligned (hungarian)", ModelSpec(Tokenizer.ALIGNED_HUNGARIAN, Start.BASE, _GAP), "base",
           ComputeKind.FINETUNE, "refit SIDs aligned to legacy (Hungarian; the paper's alignment, no remap), "
                                 "Base fine-tuned on gap"),
    Policy("FT-aligned+new", ModelSpec(Tokenizer.ALIGNED_HUNGARIAN, Start.BASE, _GAP), "base+gap",
           ComputeKind.FINETUNE, "FT-aligned (hungarian)'s model, items first seen in gap also allowed"),
    Policy("Refresh with remap", _REMAP, "base", ComputeKind.FINETUNE,
           "refit SIDs (aligned, Hungarian), Base's code embeddings carried onto the new codes, then fine-tuned on gap"),
    Policy("Refresh with remap+new", _REMAP, "base+gap", ComputeKind.FINETUNE,
           "Refresh with remap's model, items first seen in gap also allowed"),
    Policy("Full", FULL_MODEL, "base+gap", ComputeKind.FULL, "a rebuild: SASRec, tokenizer and retriever trained anew "
           "on base+gap"),
    Policy("Full+FT", ModelSpec(Tokenizer.REBUILT, Start.FULL, _GAP), "base+gap", ComputeKind.FINETUNE,
           "Full, then the same gap fine-tune a refresh gets (the recency control)"),
)

# Asked for by name only (not in the default set): what explains the main table.
ABLATIONS: tuple[Policy, ...] = (
    # Is a fresh vocabulary worth anything to this retriever? Full's rebuild with the stale SIDs.
    Policy("Full-old", ModelSpec(Tokenizer.LEGACY, Start.SCRATCH, "base+gap"), "base", ComputeKind.FULL,
           "stale legacy SIDs, retriever rebuilt from scratch on base+gap (an ablation of Full)"),
    # The dense reference a Base is measured against (issue 39): the SASRec behind the legacy
    # SIDs, trained on base alone until its validation stops improving.
    Policy("SASRec (base)", Baseline("sasrec", "base"), "base", ComputeKind.BASELINE,
           "the dense SASRec behind the legacy SIDs (trained on base until its validation stops improving), "
           "exact top-K over base items"),
    # Full with the refresh's SIDs (continued from the legacy models under a warm recipe).
    Policy("Full (warm SIDs)", ModelSpec(Tokenizer.REFRESHED, Start.SCRATCH, "base+gap"), "base+gap", ComputeKind.FULL,
           "the refresh's SIDs (refit on base+gap as the recipe says), retriever trained from scratch on base+gap"),
)

BY_LABEL: dict[str, Policy] = {p.label: p for p in POLICIES + ABLATIONS}
STALE = BY_LABEL["FT-old"]  # the reference every refresh is measured against
INCREMENTAL = BY_LABEL["FT-old+new"]  # the reference of every policy that may return gap items


def policy(label: str) -> Policy:
    return BY_LABEL[label]


def aligned_variants(labels: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Among ``labels``, the aligned fine-tunes that decode over the same items as FT-old
    (the like-for-like comparison) and those that may also return newer items."""
    rows = [BY_LABEL[label] for label in labels if label in BY_LABEL]
    aligned = [p for p in rows if p.finetuned and p.model.start is Start.BASE and p.model.tokenizer.alignment]
    return ([p.label for p in aligned if p.allowed == STALE.allowed],
            [p.label for p in aligned if p.allowed != STALE.allowed])
