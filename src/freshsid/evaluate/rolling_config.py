"""The rolling protocol's configuration (:mod:`freshsid.evaluate.rolling` runs it): how the
logs are cut, where the initial build stops, which strategies run and what triggers a
recode. Only pydantic and :mod:`freshsid.config` are imported, so the command line's help
reads it without torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from freshsid.config import ExperimentConfig, preset


# The rolling protocol's strategies (freshsid.evaluate.rolling), all from one initial build.
ROLLING_STRATEGIES = ("Frozen", "FT-old", "Incremental", "Aligned", "Full", "Triggered", "MostPop")
SIGNALS = ("churn", "unseen", "decay")


class RollingConfig(BaseModel):
    """Many refreshes in a row: the logs cut into ``n_parts`` equal-count parts, an initial
    build on parts [0, initial), then one round per part r = initial ... n_parts - 2 - held_out,
    where a strategy may use part r and is scored on part r + 1; the last ``held_out`` parts
    are never read (1 by default: the standard split's test part, so that a rolling run can
    be read as often as needed). ``run`` gives every size and training setting (an experiment
    config; its protocol's windows are not used)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_parts: int = Field(10, ge=4)
    initial: int = Field(5, ge=1)
    held_out: int = Field(1, ge=0)
    strategies: tuple[str, ...] = ROLLING_STRATEGIES
    # Triggered refreshes when this staleness signal reaches the threshold chosen on the
    # first ``calibration_rounds`` rounds (during which it refreshes every round); below
    # it, it codes the round's new items incrementally, or does nothing when there are none.
    signal: Literal["churn", "unseen", "decay"] = "decay"
    calibration_rounds: int = Field(2, ge=1)
    run: ExperimentConfig = Field(default_factory=lambda: preset("cpu"))

    @model_validator(mode="after")
    def _rounds(self) -> RollingConfig:
        last = self.n_parts - 2 - self.held_out
        if self.initial > last:
            raise ValueError(f"initial ({self.initial}) must leave at least one round: at most n_parts - 2 - held_out "
                             f"= {last}")
        if self.run.recent_parts >= self.initial:
            raise ValueError(f"the run's recency pass ({self.run.recent_parts} part(s)) must be shorter than the "
                             f"initial build's {self.initial} parts")
        unknown = [s for s in self.strategies if s not in ROLLING_STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(ROLLING_STRATEGIES)}")
        return self

    @property
    def rounds(self) -> range:
        return range(self.initial, self.n_parts - 1 - self.held_out)
