"""The HTTP service's settings: decoding, micro-batching, the release watcher, and the
bounds on what a request may be; read from a JSON or TOML file, overridden from the
command line. Only pydantic is imported, so ``freshsid serve --help`` stays fast."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from freshsid.config import describe
from freshsid.errors import FreshsidError


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
    decoder: Literal["thread", "process"] = "thread"  # where the beam search runs (a process: no GIL shared with the loop)
    compile: bool = False  # torch.compile the decoding step when a release loads (tens of seconds; eager if it fails)
    poll_seconds: float = Field(1.0, gt=0.0)
    max_body_bytes: int = Field(65_536, ge=64)
    max_history: int = Field(1_000, ge=1)
    max_id_chars: int = Field(256, ge=1)
    header_timeout_s: float = Field(10.0, gt=0.0)
    body_timeout_s: float = Field(10.0, gt=0.0)
    keep_alive_s: float = Field(120.0, gt=0.0)  # idle pooled connections: well past a starved machine's pauses


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
