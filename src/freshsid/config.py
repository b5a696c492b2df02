"""Every setting of a run, defined once: the temporal protocol, one frozen config per
stage (SASRec, tokenizer, retriever sizes, training schedule, refresh recipe), the
presets, the experiment's configuration, and loading it from a file.

Only pydantic and the data layer's ``Window`` are imported here, so the CLI's
defaults read these objects (never a retyped ``"0:8"`` or ``20``) without loading
torch. An experiment writes its whole :class:`ExperimentConfig` into ``results.json``,
and :func:`load_config` reads it back from there, or from a JSON or TOML file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from freshsid.data.temporal import Window
from freshsid.errors import FreshsidError
from freshsid.policies import ABLATIONS, POLICIES
from freshsid.metrics import DEFAULT_KS

PresetName = Literal["tiny", "cpu", "paper"]
WindowName = Literal["base", "gap", "base+gap", "test"]


class ProtocolConfig(BaseModel):
    """Number of parts, the named windows and the history length; defaults follow the paper."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_parts: int = 10
    base: Window = Window(start=0, stop=8)
    gap: Window = Window(start=8, stop=9)
    test: Window = Window(start=9, stop=10)
    max_history: int = Field(20, gt=0)
    # Keep only the k-core of the events before the test part (users and items with at least
    # k events there); the test part is never filtered. None: the events as loaded.
    kcore: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _fits(self) -> ProtocolConfig:
        for name in ("base", "gap", "test"):
            if getattr(self, name).stop > self.n_parts:
                raise ValueError(f"window {name} ends after part {self.n_parts - 1}")
        if self.base.stop != self.gap.start:
            raise ValueError("the gap window must start where base ends")
        if self.gap.stop > self.test.start:
            raise ValueError("the test window must come after base and gap")
        return self

    def window(self, name: WindowName) -> Window:
        """A named window; ``base+gap`` is the span from base's start to gap's stop."""
        if name == "base+gap":
            return Window(start=self.base.start, stop=self.gap.stop)
        return getattr(self, name)

    def validation(self) -> ProtocolConfig:
        """The shifted split on which settings are chosen: every window one part earlier
        (by default base [0, 7), gap [7, 8), evaluated on part 8), so part 9 is never read."""
        shift = lambda w: Window(start=max(0, w.start - 1), stop=w.stop - 1)  # noqa: E731
        return self.model_copy(update={"base": shift(self.base), "gap": shift(self.gap), "test": shift(self.test)})


PROTOCOL = ProtocolConfig()
# Where training and decoding run (freshsid.runtime): auto is CUDA when available.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
DEVICE_HELP = "Where to train and decode: auto (CUDA when available), cpu, cuda or cuda:N."
DEFAULT_BEAM = 500  # the paper's headline cutoff is K = 500, and the beam must hold K items


class SASRecConfig(BaseModel):
    """Model size and training schedule; defaults follow the paper's embedding model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(64, ge=4)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)
    ffn_dim: int = Field(256, ge=1)
    max_length: int = Field(50, ge=2)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # Sampled softmax reached ~0.95x the validation recall of the full softmax at ~1/4 of the FLOPs on Beauty.
    # bce: binary cross-entropy of the next item against one uniform negative (the reference
    # implementation's loss)
    loss: Literal["softmax", "sampled_softmax", "bce"] = "sampled_softmax"
    n_negatives: int = Field(1024, ge=1)  # sampled_softmax only
    # all: every user's whole history, in windows of max_length + 1; last: only each user's
    # last max_length + 1 items (one training sequence per user, as the reference does)
    sequences: Literal["all", "last"] = "all"
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(3e-3, gt=0.0)
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(3, ge=1)  # epochs without a better validation score before stopping
    valid_users: int = Field(2000, ge=0)  # held out from the training window; 0 = no early stopping
    valid_metric: str = Field("recall@50", pattern=r"^(recall|ndcg)@[1-9][0-9]*$")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        return self


class SidConfig(BaseModel):
    """Tokenizer choice and SID shape. The shape is then owned by the SidTable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokenizer: Literal["rqvae", "rqkmeans"] = "rqvae"
    n_levels: int = 3
    codebook_size: int = 256
    suffix_size: int = 256
    balanced: bool = False  # rqkmeans only: size-balanced assignment
    epochs: int | None = Field(None, gt=0)  # rqvae only; None = RQVAE_EPOCHS
    # When continuing from a previous tokenizer's state (a warm refresh): RQ-VAE epochs or
    # RQ-KMeans Lloyd iterations; 0 codes the new embeddings with the old tokenizer as is.
    warm_epochs: int = Field(0, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _options_fit_the_tokenizer(self) -> SidConfig:
        # An option of the other tokenizer would be silently ignored: refuse it instead.
        if self.tokenizer == "rqvae" and self.balanced:
            raise ValueError("balanced assignment applies to the rqkmeans tokenizer only")
        if self.tokenizer == "rqkmeans" and self.epochs is not None:
            raise ValueError("epochs apply to the rqvae tokenizer only (rqkmeans runs a fixed number of k-means iterations)")
        return self


RQVAE_EPOCHS = 50


class TrainConfig(BaseModel):
    """Optimisation settings; the same object drives fit and finetune."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    # cosine: linear warm-up, then cosine decay to min_lr_ratio; constant: warm-up, then lr
    # (the reference implementation fine-tunes at a constant 1e-4)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(3, gt=0)  # epochs without validation improvement before stopping
    valid_fraction: float = Field(0.05, ge=0, lt=1)  # users held out for early stopping
    seed: int = 0


class Recipe(BaseModel):
    """How collaborative SIDs are built and refreshed: settings over the run's SASRec and
    tokenizer configs (for the legacy build and the refresh alike), what the refresh
    continues from the legacy build, and settings for the refresh alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str
    sasrec: dict[str, Any] = {}
    sid: dict[str, Any] = {}
    warm_embeddings: bool = False  # the refreshed SASRec starts from the legacy SASRec's weights
    warm_tokenizer: bool = False  # the refreshed tokenizer starts from the legacy tokenizer's state
    refresh_sasrec: dict[str, Any] = {}
    refresh_sid: dict[str, Any] = {}
    # Share of the items both tables code that take their refreshed (aligned) code: those whose
    # neighbourhood in the embedding space moved most; the others keep their legacy SID.
    # 1 moves every item (the paper's alignment).
    move_share: float = Field(1.0, gt=0.0, le=1.0)
    # Levels whose code embeddings a fine-tune on the refreshed table first carries over from
    # the legacy codes of each code's items (freshsid.retriever.remap); 0 keeps the checkpoint's rows.
    remap_levels: int = Field(0, ge=0)
    # How a remapped code's row mixes the legacy rows: each of its items once ("items"), or
    # each by its events in the fine-tune's window plus one ("events": a code that merged
    # items leans towards the ones users pick).
    remap_weight: Literal["items", "events"] = "items"
    # The first optimiser steps of a remapping fine-tune (above) update the token embeddings
    # only (within the same budget): the carried rows settle before the network moves.
    embedding_steps: int = Field(0, ge=0)

    def refresh_settings(self) -> dict[str, Any]:
        """What a refresh's SIDs depend on (a cache key): recipes that differ only in their
        name or in how the fine-tune starts share one refresh."""
        return self.model_dump(exclude={"name", "description", *FINETUNE_START})

    def finetune_start(self) -> dict[str, Any]:
        """How a remapping fine-tune on this recipe's refreshed codes starts, beyond the levels
        it carries, as ``freshsid.retriever.remap.RemapPlan``'s keyword arguments: only the
        settings that differ from the defaults (none for the recipes that predate them)."""
        start = self.model_dump(include={"remap_weight", "embedding_steps"}, exclude_defaults=True)
        return {"weight" if name == "remap_weight" else name: value for name, value in start.items()}

    def legacy_configs(self, sasrec: SASRecConfig, sid: SidConfig) -> tuple[SASRecConfig, SidConfig]:
        """The SASRec and tokenizer configs of the legacy build under this recipe."""
        return _override(sasrec, self.sasrec), _override(sid, self.sid)

    def refresh_configs(self, sasrec: SASRecConfig, sid: SidConfig) -> tuple[SASRecConfig, SidConfig]:
        """The SASRec and tokenizer configs of the refresh under this recipe."""
        legacy_sasrec, legacy_sid = self.legacy_configs(sasrec, sid)
        return _override(legacy_sasrec, self.refresh_sasrec), _override(legacy_sid, self.refresh_sid)


FINETUNE_START = ("remap_levels", "remap_weight", "embedding_steps")  # Recipe fields no refresh depends on


def _override(config: BaseModel, changes: dict[str, Any]) -> Any:
    return type(config).model_validate({**config.model_dump(), **changes}) if changes else config


# Beyond the paper: move codes only where behaviour moved. The SASRec continues for a
# fixed small budget (no early stopping into a weaker model), the tokenizer continues
# from the legacy codebooks, then alignment.
_STABLE = Recipe(name="stable", warm_embeddings=True, warm_tokenizer=True,
                 refresh_sasrec={"max_epochs": 3, "valid_users": 0}, refresh_sid={"warm_epochs": 10},
                 description="SASRec continues 3 epochs from the legacy one, the tokenizer 10 epochs from the legacy "
                             "codebooks")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="cold", description="a new SASRec and a new tokenizer on the refresh window (the reference protocol)"),
        Recipe(name="warm", warm_embeddings=True, warm_tokenizer=True,
               description="SASRec continues from the legacy one (early-stopped), the legacy tokenizer codes its "
                           "vectors (sid.warm_epochs of further fitting)"),
        _STABLE,
        # Further: after the stable refresh only the share of items whose 10 nearest
        # neighbours changed most take their aligned code; the others keep their legacy SID.
        *(_STABLE.model_copy(update={"name": f"sticky-{round(share * 100)}", "move_share": share,
                                     "description": f"stable, then only the {share:.0%} of items whose neighbourhood "
                                                    "moved most take their new code"})
          for share in (0.25, 0.5)),
        # Further: the warm start's code embeddings follow the items onto their refreshed codes.
        *(_STABLE.model_copy(update={"name": f"remap-{levels}", "remap_levels": levels,
                                     "description": f"stable, then the fine-tune starts with the code embeddings of "
                                                    f"the first {levels} level(s) carried from the legacy codes of "
                                                    "their items"})
          for levels in (1, 3)),
        # Issue 23's candidates: remap-3 with a merged code leaning to its busy items, or
        # with the carried rows settling alone before the network moves (the cpu preset's
        # learning-rate warm-up is 10 steps).
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
        # The reference implementation's embeddings and tokenizer (sizes stay the preset's).
        Recipe(name="paper", sasrec={"loss": "bce", "sequences": "last", "learning_rate": 1e-4, "n_layers": 2,
                                     "n_heads": 2, "dropout": 0.3, "max_length": 20, "valid_users": 0,
                                     "max_epochs": 200},
               sid={"tokenizer": "rqkmeans", "epochs": None},
               description="SASRec with BCE and one negative on each user's last 21 items, 200 epochs at lr 1e-4; "
                           "residual k-means on the raw vectors; a cold refresh"),
    )
}


# Retriever sizes by preset (freshsid.retriever.model.RetrieverConfig.preset); the SID
# shape always comes from the SidTable.
RETRIEVER_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=32, n_layers=2, n_heads=2, ffn=64, user_buckets=100),
    "cpu": dict(width=128, n_layers=4, n_heads=4, ffn=512, user_buckets=2000),
    "paper": dict(width=768, n_layers=4, n_heads=6, ffn=1024, user_buckets=8000),
}


class ExperimentConfig(BaseModel):
    """Everything an experiment depends on; :func:`preset` fills it in."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    preset: PresetName = "cpu"
    policies: tuple[str, ...] = tuple(p.label for p in POLICIES)
    protocol: ProtocolConfig = PROTOCOL
    sasrec: SASRecConfig = SASRecConfig()
    sid: SidConfig = SidConfig()
    retriever: PresetName = "cpu"
    fit: TrainConfig = TrainConfig()
    finetune: TrainConfig = TrainConfig(epochs=2, lr=5e-4, warmup_steps=10, patience=2)
    beam: int = Field(DEFAULT_BEAM, gt=0)
    ks: tuple[int, ...] = DEFAULT_KS
    max_eval_users: int | None = Field(None, gt=0)
    seed: int = 0
    threads: int = Field(2, gt=0)
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    # How collaborative SIDs are built and refreshed: a name in RECIPES. remap-3 was chosen
    # on Beauty's validation split (benchmarks/RESULTS.md, issue 10).
    recipe: str = "remap-3"
    # Every fine-tuned policy is trained and scored once per seed (the same seeds for all,
    # so comparisons between them are paired); its metrics are the mean over seeds.
    finetune_seeds: tuple[int, ...] = Field((0,), min_length=1)

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, policies: tuple[str, ...]) -> tuple[str, ...]:
        known = [p.label for p in POLICIES + ABLATIONS]
        unknown = [p for p in policies if p not in known]
        if unknown:
            raise ValueError(f"unknown policies {unknown}; choose from {', '.join(known)}")
        if not policies:
            raise ValueError("no policy chosen")
        return policies

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, name: str) -> str:
        if name not in RECIPES:
            raise ValueError(f"unknown refresh recipe {name!r}; choose from {', '.join(RECIPES)}")
        return name

    @model_validator(mode="after")
    def _remap_within_levels(self) -> ExperimentConfig:
        levels = RECIPES[self.recipe].remap_levels
        if levels > self.sid.n_levels:
            raise ValueError(f"recipe {self.recipe!r} carries {levels} levels of code embeddings but the SIDs have "
                             f"{self.sid.n_levels}; choose a recipe that carries fewer (remap-1) or build more levels")
        return self

    @field_validator("finetune_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("fine-tuning seeds must be distinct integers >= 0")
        return seeds

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if not ks or min(ks) < 1:
            raise ValueError("cutoffs K must be positive integers")
        return tuple(sorted(set(ks)))


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        preset="tiny",
        sasrec=SASRecConfig(dim=32, max_epochs=3, patience=2, valid_users=200, max_length=20),
        sid=SidConfig(tokenizer="rqkmeans", codebook_size=16, suffix_size=64),
        retriever="tiny",
        fit=TrainConfig(epochs=2, batch_size=128, lr=3e-3, warmup_steps=5),
        finetune=TrainConfig(epochs=1, batch_size=128, lr=1e-3, warmup_steps=2),
        beam=50,
        ks=(1, 5, 10, 20, 50),
        max_eval_users=300,
        # The demo's synthetic drift was chosen on its validation split with a cold refresh.
        recipe="cold",
    ),
    # Sized so that Beauty trains in well under an hour on 2 cores (benchmarks/RESULTS.md).
    # Every test user is scored: with a 2,000-user sample the standard error of R@500
    # (~0.008) exceeded the differences under study; each evaluation records its decode time.
    "cpu": dict(
        preset="cpu",
        fit=TrainConfig(epochs=8, batch_size=256, lr=1e-3, patience=2),
        finetune=TrainConfig(epochs=2, batch_size=256, lr=5e-4, warmup_steps=10, patience=2),
        max_eval_users=None,
    ),
    "paper": dict(
        preset="paper",
        sid=SidConfig(codebook_size=512, suffix_size=512),
        retriever="paper",
        threads=16,
    ),
}


# The rolling protocol's strategies (freshsid.evaluate.rolling), all from one initial build.
ROLLING_STRATEGIES = ("Frozen", "FT-old", "Incremental", "Aligned", "Full", "Triggered", "MostPop")
SIGNALS = ("churn", "unseen", "decay")


class RollingConfig(BaseModel):
    """Many refreshes in a row: the logs cut into ``n_parts`` equal-count parts, an initial
    build on parts [0, initial), then one round per part r = initial ... n_parts - 2, where a
    strategy may use part r and is scored on part r + 1. ``run`` gives every size and
    training setting (an experiment config; its protocol's windows are not used)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_parts: int = Field(10, ge=4)
    initial: int = Field(5, ge=1)
    strategies: tuple[str, ...] = ROLLING_STRATEGIES
    # Triggered refreshes when this staleness signal reaches the threshold chosen on the
    # first ``calibration_rounds`` rounds (during which it refreshes every round); below
    # it, it codes the round's new items incrementally, or does nothing when there are none.
    signal: Literal["churn", "unseen", "decay"] = "decay"
    calibration_rounds: int = Field(2, ge=1)
    run: ExperimentConfig = Field(default_factory=lambda: preset("cpu"))

    @model_validator(mode="after")
    def _rounds(self) -> RollingConfig:
        if self.initial > self.n_parts - 2:
            raise ValueError(f"initial ({self.initial}) must leave at least one round: at most n_parts - 2 = {self.n_parts - 2}")
        unknown = [s for s in self.strategies if s not in ROLLING_STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(ROLLING_STRATEGIES)}")
        return self

    @property
    def rounds(self) -> range:
        return range(self.initial, self.n_parts - 1)


class ServeConfig(BaseModel):
    """The HTTP service: decoding, micro-batching, the release watcher, and the bounds on
    what a request may be (larger bodies get 413, longer histories and ids 422; a client
    that sends its headers or body slower than the timeouts is cut off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    beam: int = Field(100, ge=1)
    max_batch: int = Field(32, ge=1)
    max_wait_ms: float = Field(5.0, ge=0.0)  # how long the first request of a batch waits for company
    batching: bool = True
    threads: int = Field(0, ge=0)  # torch threads of the decoding thread; 0: one less than the process's (at least 1)
    compile: bool = False  # torch.compile the decoding step when a release loads (tens of seconds; eager if it fails)
    poll_seconds: float = Field(1.0, gt=0.0)
    max_body_bytes: int = Field(65_536, ge=64)
    max_history: int = Field(1_000, ge=1)
    max_id_chars: int = Field(256, ge=1)
    header_timeout_s: float = Field(10.0, gt=0.0)
    body_timeout_s: float = Field(10.0, gt=0.0)
    keep_alive_s: float = Field(120.0, gt=0.0)  # idle pooled connections: well past a starved machine's pauses


def preset(name: str, **overrides: Any) -> ExperimentConfig:
    """The named preset, with top-level fields overridden."""
    if name not in PRESETS:
        raise FreshsidError(f"Unknown preset {name!r}; use one of {', '.join(PRESETS)}.")
    return ExperimentConfig(**{**PRESETS[name], **overrides})


def load_config(path: Path) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a JSON or TOML file, or from the ``config`` of an
    experiment's ``results.json`` (so any run can be repeated from its own results).

    The file's ``preset`` (default ``cpu``) is the starting point and every setting the
    file gives overrides it, tables key by key: ``preset = "tiny"`` with ``[sasrec] dim = 16``
    is the tiny preset with a 16-wide SASRec."""
    path = Path(path)
    from freshsid.data.tables import check_readable

    check_readable(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}"
        raise FreshsidError(f"Cannot read the config {path} ({reason}); pass a JSON or TOML experiment config.") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "policies" in data:
        data = data["config"]  # a results.json
    if not isinstance(data, dict):
        raise FreshsidError(f"{path} does not hold a table of settings; pass a JSON object or a TOML document.")
    if "refresh" in data and "recipe" not in data:
        data = dict(data)
        data["recipe"] = data.pop("refresh")  # results written before the field was renamed
    name = data.get("preset", "cpu")
    if not isinstance(name, str) or name not in PRESETS:
        raise FreshsidError(f"Invalid setting in {path}: preset {name!r} is not one of {', '.join(PRESETS)}; fix the file.")
    try:
        return ExperimentConfig.model_validate(_merge(preset(name).model_dump(mode="json"), data))
    except ValidationError as exc:
        raise FreshsidError(f"Invalid setting in {path}: {describe(exc)}; fix the file.") from None


def serve_config(path: Path | None, **overrides: Any) -> ServeConfig:
    """A :class:`ServeConfig` from a JSON or TOML file of its fields (or the defaults), with
    the given fields overridden (the CLI's options; None: not given)."""
    from freshsid.data.tables import check_readable

    data: Any = {}
    if path is not None:
        check_readable(Path(path))
        try:
            text = Path(path).read_text()
            data = tomllib.loads(text) if Path(path).suffix.lower() == ".toml" else json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError):
            raise FreshsidError(f"Cannot read the serve config {path}; pass a JSON or TOML file of settings.") from None
        if not isinstance(data, dict):
            raise FreshsidError(f"{path} does not hold a table of settings; pass a JSON object or a TOML document.")
    try:
        return ServeConfig.model_validate({**data, **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as exc:
        raise FreshsidError(f"Invalid serve setting: {describe(exc)}; fix {path or 'the option'}.") from None


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, nested tables merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error, as ``where: what``."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
