"""What every command shares: the dataset options, presets, part ranges, progress.

The eight dataset options (DATASET or ``--logs``/``--items``, ``--data-dir``,
``--columns``, ``--sep``, ``--drop-duplicates``, ``--where``) are declared once here and added to
a command by :func:`data_options`; the command receives them as one
:class:`DataSource` and calls :meth:`DataSource.load` when it needs the logs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import numpy as np
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from freshsid.config import DEVICE_HELP, PROTOCOL
from freshsid.errors import FreshsidError

if TYPE_CHECKING:  # kept out of module import so that --help never loads polars
    from freshsid.data.interactions import Interactions

STATE: dict[str, bool | None] = {"progress": None}  # set by the root callback (--progress/--no-progress)


def show_progress() -> bool:
    """Whether progress bars and spinners are wanted: --progress, else only on a terminal."""
    return STATE["progress"] if STATE["progress"] is not None else sys.stderr.isatty()


@contextlib.contextmanager
def working(label: str) -> Iterator[None]:
    """A spinner on stderr while a slow step runs (on a terminal, or with --progress)."""
    if not show_progress():
        yield
        return
    with Console(stderr=True).status(label):
        yield


# ----------------------------------------------------------------------------- dataset options
DatasetArg = Annotated[
    str | None,
    typer.Argument(help="Named dataset: amazon-beauty, amazon-sports, amazon-toys or synthetic.", show_default=False),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", help="Named dataset: amazon-beauty, amazon-sports, amazon-toys or synthetic.", show_default=False),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data root or dataset folder (default: $FRESHSID_DATA or ../shared/data)."),
]
LogsOpt = Annotated[
    Path | None, typer.Option("--logs", help="A log file: CSV/TSV/parquet (.gz ok), an original Amazon/MovieLens file, "
                              "a Yambda parquet file or a VK-LSVD folder.")
]
ItemsOpt = Annotated[Path | None, typer.Option("--items", help="Item metadata file for --logs.")]
ColumnsOpt = Annotated[
    str | None, typer.Option("--columns", help="User, item and time column names of --logs, e.g. uid,sku,ts.")
]
SepOpt = Annotated[str | None, typer.Option("--sep", help="Field separator of --logs (default: sniffed).")]
WhereOpt = Annotated[
    str | None,
    typer.Option("--where", help="Yambda / VK-LSVD --logs: a SQL condition choosing the events that count, "
                 "e.g. \"event_type = 'listen' AND is_organic = 1 AND played_ratio_pct >= 50\"."),
]
DropDuplicatesOpt = Annotated[
    bool, typer.Option("--drop-duplicates", help="Keep one copy of exact duplicate events instead of refusing them.")
]


@dataclass(frozen=True)
class DataSource:
    """The dataset options of one command invocation; nothing is read until :meth:`load`."""

    dataset: str | None = None
    data_dir: Path | None = None
    logs: Path | None = None
    items: Path | None = None
    columns: str | None = None
    sep: str | None = None
    drop_duplicates: bool = False
    where: str | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.dataset, self.data_dir, self.logs))

    def load(self) -> Interactions:
        """One :func:`~freshsid.data.registry.load_dataset` call."""
        from freshsid.data.logs import LogSchema
        from freshsid.data.registry import load_dataset

        schema = None
        if self.columns is not None or self.sep is not None:
            names = (self.columns or "user_id,item_id,timestamp").split(",")
            if len(names) != 3:
                raise FreshsidError(f"--columns {self.columns!r} must name three columns, USER,ITEM,TIME, e.g. uid,sku,ts.")
            try:
                schema = LogSchema(user=names[0].strip(), item=names[1].strip(), time=names[2].strip(), separator=self.sep)
            except ValidationError as exc:
                raise FreshsidError(f"Invalid --columns/--sep: {exc.errors()[0]['msg']}; fix the option.") from None
        with working(f"Loading {self.dataset or self.logs or self.data_dir}"):
            return load_dataset(
                self.dataset,
                data_dir=self.data_dir,
                logs=self.logs,
                items=self.items,
                schema=schema,
                drop_duplicates=self.drop_duplicates,
                where=self.where,
            )


_DATA_ANNOTATIONS = {
    "data_dir": DataDirOpt,
    "logs": LogsOpt,
    "items": ItemsOpt,
    "columns": ColumnsOpt,
    "sep": SepOpt,
    "drop_duplicates": DropDuplicatesOpt,
    "where": WhereOpt,
}
F = TypeVar("F", bound=Callable[..., Any])


def data_options(*, dataset: Literal["argument", "option"] = "option") -> Callable[[F], F]:
    """Give a command the shared dataset options; it receives them as ``data: DataSource``.

    ``dataset="argument"`` takes the dataset name as the first positional argument
    (``freshsid data stats amazon-beauty``), ``"option"`` as ``--dataset`` (for commands
    whose positional arguments are artifacts). Typer reads the command's signature, so
    the wrapper presents the command's own parameters plus these ones.
    """

    def decorate(func: F) -> F:
        own = [p for name, p in inspect.signature(func, eval_str=True).parameters.items() if name != "data"]
        kw = inspect.Parameter.KEYWORD_ONLY
        name_param = inspect.Parameter("dataset", kw, default=None, annotation=DatasetArg if dataset == "argument" else DatasetOpt)
        rest = [
            inspect.Parameter(name, kw, default=False if name == "drop_duplicates" else None, annotation=annotation)
            for name, annotation in _DATA_ANNOTATIONS.items()
        ]
        params = [name_param, *(p.replace(kind=kw) for p in own), *rest]

        @functools.wraps(func)
        def command(**values: Any) -> Any:
            source = DataSource(**{f.name: values.pop(f.name) for f in fields(DataSource)})
            return func(data=source, **values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


# ----------------------------------------------------------------------------- other shared options
PresetOpt = Annotated[
    str,
    typer.Option("--preset", help="Size preset: tiny, cpu or paper (freshsid.config.PRESETS)."),
]
def _artifact_out(out: Path | None) -> Path | None:
    from freshsid.artifacts import check_output

    return None if out is None else check_output(out)


def _run_out(out: Path | None) -> Path | None:
    from freshsid.artifacts import check_output
    from freshsid.evaluate.stages import STAGES_FILE

    return None if out is None else check_output(out, marker=STAGES_FILE)


# Output folders are checked when the options are parsed, before any work starts.
OutOpt = Annotated[Path, typer.Option("--out", help="Output artifact folder (replaced atomically).", show_default=False,
                                      callback=_artifact_out)]
RunOutOpt = Annotated[Path, typer.Option("--out", help="Run folder: stages are cached there, so a rerun resumes.",
                                         show_default=False, callback=_run_out)]
SidsOpt = Annotated[Path, typer.Option("--sids", help="A SidTable folder (sids build / sids align).", show_default=False)]
CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", help="A retriever checkpoint folder (retriever train / finetune).", show_default=False)
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: the preset's).")]
KsOpt = Annotated[str | None, typer.Option("--ks", help="Cutoffs K, comma-separated, e.g. 1,10,100 (default: 1..500).")]
BeamOpt = Annotated[int, typer.Option("--beam", min=1, help="Beam width of the trie-constrained decoding.")]
MaxUsersOpt = Annotated[int | None, typer.Option("--max-users", min=1, help="Evaluate a random sample of this many users.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads of every stage (default: the preset's, 2; results depend on it, so compare runs made with the same number).")]
# Protocol windows as CLI defaults, from the one protocol definition.
BASE, GAP, TEST = str(PROTOCOL.base), str(PROTOCOL.gap), str(PROTOCOL.test)


def experiment_preset(name: str):
    """The named :class:`~freshsid.config.ExperimentConfig`: every stage's sizes come from it."""
    from freshsid.config import preset

    return preset(name)


M = TypeVar("M", bound=BaseModel)


def configure(base: M, **changes: Any) -> M:
    """``base`` with the options the user set (``None`` keeps the base value), validated again."""
    values = {**base.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
    try:
        return type(base).model_validate(values)
    except ValidationError as exc:
        from freshsid.config import describe

        raise FreshsidError(f"Invalid setting {describe(exc)}; fix the option.") from None


def parse_ks(text: str | None) -> tuple[int, ...]:
    """``"1,10,100"`` -> (1, 10, 100); None gives the protocol's cutoffs."""
    from freshsid.metrics import DEFAULT_KS

    if text is None:
        return DEFAULT_KS
    try:
        ks = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        ks = ()
    if not ks or ks[0] < 1:
        raise FreshsidError(f"--ks {text!r} is not a comma-separated list of positive integers, e.g. 1,10,100.")
    return ks


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def load_split(data: DataSource, *tables: Any):
    """The logs of ``data``, cut into the protocol's parts, checked against the SID tables
    that will index them (:meth:`SidTable.check_item_ids`)."""
    from freshsid.data.temporal import TemporalSplit

    logs = data.load()
    for table in tables:
        table.check_item_ids(logs.item_ids, logs_name=logs.name)
    return TemporalSplit(logs, PROTOCOL.n_parts)


def use_device(device: str, *, ranks: bool = False):
    """Set up where a command trains or decodes (:func:`freshsid.runtime.setup`).

    ``ranks``: the command can run as several processes under torchrun; the others refuse
    to. Ranks other than 0 print nothing (rank 0 reports for all)."""
    import os

    from freshsid.runtime import setup

    if not ranks and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FreshsidError("This command runs as one process; launch it without torchrun (retriever train, finetune "
                            "and eval, embed collab and recommend-batch can run as several).")
    runtime = setup(device)
    if not runtime.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return runtime
