"""The policies compared by the experiment, each defined once, as data.

A policy is a model and the items it may recommend. A model is a tokenizer (which
SidTable it speaks), a starting point (from scratch, or Base's checkpoint) and a
training window: from scratch it is fit on that window; from Base it is fine-tuned
with the loss on that window's events (histories from part 0). Two policies with the
same model share it (FT-aligned+new decodes FT-aligned (hungarian)'s model over more
items). The runner builds what a row says, the report reads the rows, the tests
check the artifacts against them; adding a policy is one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

WindowName = Literal["base", "gap", "base+gap"]


class Tokenizer(StrEnum):
    """Which SidTable a model speaks."""

    LEGACY = "legacy"  # fit on base
    REFRESHED = "refreshed"  # refit on base+gap, codes as the refit numbers them
    ALIGNED_GREEDY = "aligned-greedy"  # refreshed, relabelled onto legacy greedily
    ALIGNED_HUNGARIAN = "aligned-hungarian"  # refreshed, relabelled onto legacy exactly

    @property
    def alignment(self) -> str | None:
        """The alignment method of an aligned tokenizer, else None."""
        return self.value.removeprefix("aligned-") if self.value.startswith("aligned-") else None


class Start(StrEnum):
    SCRATCH = "scratch"
    BASE = "base"  # Base's checkpoint (a warm start)


class ComputeKind(StrEnum):
    BASE = "base"  # the legacy build everyone starts from
    FINETUNE = "finetune"  # a warm-start fine-tune: what a refresh costs
    FULL = "full"  # a rebuild from scratch


@dataclass(frozen=True)
class ModelSpec:
    tokenizer: Tokenizer
    start: Start
    train: WindowName  # fit window (from scratch) or target window (fine-tune)

    @property
    def slug(self) -> str:
        """The model's stage name, derived from its definition."""
        return f"{self.start}-{self.tokenizer}-{self.train.replace('+', '-')}"


@dataclass(frozen=True)
class Policy:
    label: str
    model: ModelSpec
    allowed: WindowName  # decoding may return the items seen in this window
    compute: ComputeKind
    description: str

    @property
    def slug(self) -> str:
        return self.label.lower().replace(" (", "-").replace(")", "").replace("+", "-plus-").replace(" ", "-")

    @property
    def finetuned(self) -> bool:
        return self.model.start is Start.BASE


BASE_MODEL = ModelSpec(Tokenizer.LEGACY, Start.SCRATCH, "base")

POLICIES: tuple[Policy, ...] = (
    Policy("Base", BASE_MODEL, "base", ComputeKind.BASE, "legacy SIDs, retriever trained on base"),
    Policy("FT-old", ModelSpec(Tokenizer.LEGACY, Start.BASE, "gap"), "base", ComputeKind.FINETUNE,
           "stale legacy SIDs, Base fine-tuned on gap"),
    Policy("FT-new", ModelSpec(Tokenizer.REFRESHED, Start.BASE, "gap"), "base", ComputeKind.FINETUNE,
           "SIDs refit on base+gap (unaligned), Base fine-tuned on gap"),
    Policy("FT-aligned (greedy)", ModelSpec(Tokenizer.ALIGNED_GREEDY, Start.BASE, "gap"), "base", ComputeKind.FINETUNE,
           "refit SIDs aligned to legacy (greedy), Base fine-tuned on gap"),
    Policy("FT-aligned (hungarian)", ModelSpec(Tokenizer.ALIGNED_HUNGARIAN, Start.BASE, "gap"), "base",
           ComputeKind.FINETUNE, "refit SIDs aligned to legacy (Hungarian), Base fine-tuned on gap"),
    Policy("FT-aligned+new", ModelSpec(Tokenizer.ALIGNED_HUNGARIAN, Start.BASE, "gap"), "base+gap",
           ComputeKind.FINETUNE, "FT-aligned (hungarian)'s model, items first seen in gap also allowed"),
    Policy("Full", ModelSpec(Tokenizer.REFRESHED, Start.SCRATCH, "base+gap"), "base+gap", ComputeKind.FULL,
           "SIDs and retriever rebuilt from scratch on base+gap"),
)

# Asked for by name only (not in the default set): what explains the main table.
ABLATIONS: tuple[Policy, ...] = (
    # Is a fresh vocabulary worth anything to this retriever? Full's rebuild with the stale SIDs.
    Policy("Full-old", ModelSpec(Tokenizer.LEGACY, Start.SCRATCH, "base+gap"), "base", ComputeKind.FULL,
           "stale legacy SIDs, retriever rebuilt from scratch on base+gap (an ablation of Full)"),
)

BY_LABEL: dict[str, Policy] = {p.label: p for p in POLICIES + ABLATIONS}
STALE = BY_LABEL["FT-old"]  # the reference every refresh is measured against


def policy(label: str) -> Policy:
    return BY_LABEL[label]


def aligned_variants(labels: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Among ``labels``, the aligned fine-tunes that decode over the same items as FT-old
    (the like-for-like comparison) and those that may also return newer items."""
    rows = [BY_LABEL[label] for label in labels if label in BY_LABEL]
    aligned = [p for p in rows if p.finetuned and p.model.tokenizer.alignment]
    return ([p.label for p in aligned if p.allowed == STALE.allowed],
            [p.label for p in aligned if p.allowed != STALE.allowed])
