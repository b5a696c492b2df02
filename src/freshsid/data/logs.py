"""Read (user, item, timestamp) logs and item catalogs from CSV, TSV or parquet files.

The loader is the boundary where user files become an :class:`Interactions`, so it
validates everything once and refuses bad input with a :class:`FreshsidError` whose
message is one sentence: the file, the line (or parquet row), the problem, the fix.
It never writes anything.

Decisions a user may want to know about:

- Compression is detected from the content (gzip magic bytes), not only the suffix;
  a ``.gz`` file that is not gzip, or truncated gzip, is refused.
- Timestamps are Unix seconds stored as int64. Integral floats (``1318896000.0``, as
  pandas writes them) are accepted; fractional, non-finite, negative or
  beyond-year-9999 values (usually milliseconds) are refused rather than silently
  rounded, because rounding would change the tie order the protocol depends on.
  Parquet datetime columns are converted to seconds.
- Ids are strings, stripped of surrounding blanks; a column whose every value is a
  canonical integer (``"17"``, not ``"017"``) becomes int64, which is faster to densify.
- Blank lines are skipped. Exact duplicate events (same user, item and second) are
  refused by default (``duplicates="error"``): in a real log they are usually a
  logging bug. ``"drop"`` keeps the first copy (tie order unchanged); ``"keep"`` is
  for logs where a same-second repeat is a real event (day-resolution logs).
- Line numbers in messages assume one record per physical line (no quoted newlines).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, model_validator

from freshsid.data.interactions import TEXT_COLUMNS, Interactions, from_arrays
from freshsid.data.tables import Source, read_header, read_table, table_name
from freshsid.errors import FreshsidError

# Year 9999 in Unix seconds: anything larger is almost surely milliseconds or finer.
MAX_TIMESTAMP = 253_402_300_799
CANONICAL_INT = r"^(0|-?[1-9][0-9]{0,17})$"
EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
Duplicates = Literal["error", "drop", "keep"]


class LogSchema(BaseModel):
    """Column names of a log file; ``separator=None`` sniffs it from the header line."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    separator: str | None = None

    @model_validator(mode="after")
    def _check(self) -> LogSchema:
        names = (self.user, self.item, self.time)
        if any(not n for n in names) or len(set(names)) != 3:
            raise ValueError(f"user, item and time columns must be three distinct names, got {names}")
        if self.separator is not None and len(self.separator) != 1:
            raise ValueError(f"separator must be one character, got {self.separator!r}")
        return self


def load_logs(
    path: str | Path,
    *,
    schema: LogSchema | None = None,
    items: str | Path | Sequence[str | Path] | None = None,
    duplicates: Duplicates = "error",
    name: str | None = None,
) -> Interactions:
    """Load an event log (and optional item metadata files) into :class:`Interactions`.

    ``items`` files are joined on the log's item column, or on ``asin`` when the
    catalog has no item column but both files have ``asin`` (the Amazon layout).
    """
    schema = schema or LogSchema()
    catalog = read_catalog(items, key=schema.item) if items is not None else None
    # Catalog rows without an item id (e.g. item_attributes.tsv keyed by asin) reach
    # their item through the log's own asin column.
    via_asin = catalog is not None and "asin" in catalog.columns and (
        "item_id" not in catalog.columns or catalog.get_column("item_id").null_count() > 0
    )
    events = read_events(path, schema=schema, duplicates=duplicates, extra=("asin",) if via_asin else ())
    if via_asin:
        if "asin" not in events.columns and "item_id" not in catalog.columns:
            raise FreshsidError(
                f"Item file(s) {_names(items)} key items by 'asin' but log {path} has no 'asin' column; "
                f"add an {schema.item!r} column to the item file."
            )
        if "asin" in events.columns:
            pairs = events.select(pl.col("item_id").cast(pl.String).alias("_by_asin"), "asin").unique("asin")
            catalog = catalog.join(pairs, on="asin", how="left")
            by_asin = pl.col("_by_asin")
            key = pl.coalesce("item_id", by_asin) if "item_id" in catalog.columns else by_asin
            catalog = catalog.with_columns(key.alias("item_id")).drop("_by_asin")
        catalog = catalog.filter(pl.col("item_id").is_not_null())
    return events_to_interactions(events, catalog=catalog, name=name or table_name(Path(path)))


def events_to_interactions(events: pl.DataFrame, *, catalog: pl.DataFrame | None, name: str) -> Interactions:
    """Validated events (file order) plus a catalog keyed by ``item_id`` -> Interactions."""
    return from_arrays(
        events.get_column("user_id").to_numpy(),
        events.get_column("item_id").to_numpy(),
        events.get_column("timestamp").to_numpy(),
        items=catalog,
        name=name,
    )


def read_events(
    path: str | Path,
    *,
    schema: LogSchema | None = None,
    duplicates: Duplicates = "error",
    extra: Sequence[str] = (),
) -> pl.DataFrame:
    """Validated events in file order: columns ``user_id``, ``item_id``, ``timestamp``
    (int64) plus any ``extra`` columns the file has."""
    schema = schema or LogSchema()
    path = Path(path)
    wanted = {schema.user: "user_id", schema.item: "item_id", schema.time: "timestamp"}
    source = Source.open(path, separator=schema.separator)
    header = read_header(source)
    for column, role in wanted.items():
        if column not in header:
            raise FreshsidError(_missing_column(path, role, column, header))
    columns = [*wanted, *(c for c in extra if c in header and c not in wanted)]
    frame = read_table(source, columns).rename(wanted)
    return validate_events(frame, source, duplicates=duplicates)


def validate_events(frame: pl.DataFrame, source: Source, *, duplicates: Duplicates = "error") -> pl.DataFrame:
    """Check and normalise raw ``user_id``, ``item_id``, ``timestamp`` columns (file order)."""
    frame = frame.with_row_index("_row")
    blank = frame.select(pl.all_horizontal(pl.col(c).is_null() for c in EVENT_COLUMNS)).to_series()
    if blank.any():
        rows = frame.filter(blank).get_column("_row").to_list()
        for row in rows:
            if not source.is_blank(row):
                raise FreshsidError(f"{source.where(row)} has no user, item or timestamp; {source.fix_row}.")
        frame = frame.filter(~blank)
    if frame.height == 0:
        raise FreshsidError(f"{source.path} holds no events (only a header); point to a log with events.")
    frame = frame.with_columns(
        _clean_ids(frame, "user_id", source),
        _clean_ids(frame, "item_id", source),
        _clean_times(frame, source),
    )
    if duplicates != "keep":
        frame = _handle_duplicates(frame, source, drop=duplicates == "drop")
    if frame.height < 2:
        raise FreshsidError(f"{source.path} holds {frame.height} event; the temporal protocol needs at least 2.")
    return frame.drop("_row")


def _first_row(frame: pl.DataFrame, mask: pl.Series) -> int:
    return int(frame.filter(mask).get_column("_row")[0])


def _null_problem(source: Source, row: int, what: str) -> str:
    """Explain a missing value: a ragged line (too few fields) or an empty field."""
    fields = source.fields_on(row)
    if fields is not None and fields < source.n_fields:
        return f"{source.where(row)} has {fields} fields where the header has {source.n_fields}; {source.fix_row}."
    unit = "line" if source.kind == "text" else "row"
    return f"{source.where(row)} has an empty {what}; fill it in or delete that {unit}."


def _clean_ids(frame: pl.DataFrame, column: str, source: Source) -> pl.Series:
    what = column.replace("_", " ")
    values = frame.get_column(column)
    if values.dtype == pl.String:
        values = values.str.strip_chars()
        empty = values.is_null() | (values == "")
        if empty.any():
            raise FreshsidError(_null_problem(source, _first_row(frame, empty), what))
        control = values.str.contains(r"[\x00-\x1f\x7f]")
        if control.any():
            raise FreshsidError(f"{source.where(_first_row(frame, control))} has a control character (such as NUL) in "
                                f"its {what}; ids must be printable text.")
        if values.str.contains(CANONICAL_INT).all():
            values = values.cast(pl.Int64)
        return values.alias(column)
    if values.dtype.is_integer() or values.dtype.is_float():
        missing = values.is_null() | values.is_nan() if values.dtype.is_float() else values.is_null()
        if missing.any():
            raise FreshsidError(_null_problem(source, _first_row(frame, missing), what))
        if values.dtype.is_float() and not (values == values.floor()).all():
            row = _first_row(frame, values != values.floor())
            raise FreshsidError(f"{source.where(row)} has a fractional {what}; ids must be integers or strings.")
        as_int = values.cast(pl.Int64, strict=False)
        # Unsigned ids beyond int64 stay exact as strings.
        return (as_int if not as_int.is_null().any() else values.cast(pl.String)).alias(column)
    raise FreshsidError(f"{source.path} {what} column has type {values.dtype}; ids must be integers or strings.")


def _clean_times(frame: pl.DataFrame, source: Source) -> pl.Series:
    values = frame.get_column("timestamp")
    if values.dtype == pl.String:
        values = values.str.strip_chars().replace("", None)
    if values.is_null().any():
        raise FreshsidError(_null_problem(source, _first_row(frame, values.is_null()), "timestamp"))
    if values.dtype == pl.Date:
        values = values.cast(pl.Datetime("ms"))
    if isinstance(values.dtype, pl.Datetime):
        seconds = values.dt.epoch("s")
    elif values.dtype.is_integer():
        seconds = values.cast(pl.Int64, strict=False)
        if seconds.is_null().any():
            row = _first_row(frame, seconds.is_null())
            raise FreshsidError(f"{source.where(row)} has a timestamp beyond int64; use Unix seconds.")
    elif values.dtype == pl.String or values.dtype.is_float():
        seconds = _numeric_seconds(frame, values, source)
    else:
        raise FreshsidError(
            f"{source.path} timestamp column has type {values.dtype}; it must hold Unix seconds (integers)."
        )
    if (seconds < 0).any():
        row = _first_row(frame, seconds < 0)
        raise FreshsidError(f"{source.where(row)} has a negative timestamp; timestamps must be Unix seconds >= 0.")
    if (seconds > MAX_TIMESTAMP).any():
        row = _first_row(frame, seconds > MAX_TIMESTAMP)
        big = seconds.filter(seconds > MAX_TIMESTAMP)[0]
        raise FreshsidError(
            f"{source.where(row)} has timestamp {big}, after year 9999; "
            "if it is in milliseconds, divide the column by 1000."
        )
    return seconds.alias("timestamp")


def _numeric_seconds(frame: pl.DataFrame, values: pl.Series, source: Source) -> pl.Series:
    """Strings or floats -> int64 seconds; integral floats pass, anything else is refused."""
    exact = values.cast(pl.Int64, strict=False) if values.dtype == pl.String else None
    if exact is not None and not exact.is_null().any():
        return exact
    floats = values.cast(pl.Float64, strict=False)
    bad = floats.is_null()
    if bad.any():
        row = _first_row(frame, bad)
        text = values.filter(bad)[0]
        raise FreshsidError(
            f"{source.where(row)} has timestamp {text!r}, which is not a number; timestamps must be Unix seconds."
        )
    if (~floats.is_finite()).any():
        row = _first_row(frame, ~floats.is_finite())
        raise FreshsidError(f"{source.where(row)} has a non-finite timestamp; replace it with Unix seconds.")
    fractional = floats != floats.floor()
    if fractional.any():
        row = _first_row(frame, fractional)
        raise FreshsidError(
            f"{source.where(row)} has fractional timestamp {floats.filter(fractional)[0]}; "
            "round timestamps to whole seconds."
        )
    if (floats.abs() > 2.0**53).any():
        row = _first_row(frame, floats.abs() > 2.0**53)
        raise FreshsidError(f"{source.where(row)} has a timestamp too large to be exact; use Unix seconds.")
    return floats.cast(pl.Int64)


def _handle_duplicates(frame: pl.DataFrame, source: Source, *, drop: bool) -> pl.DataFrame:
    # Fast path: distinct row hashes prove distinct rows (a collision only costs the exact check).
    if frame.select(pl.struct(*EVENT_COLUMNS).hash().n_unique()).item() == frame.height:
        return frame
    first = frame.select(pl.struct(*EVENT_COLUMNS).is_first_distinct()).to_series()
    if first.all():
        return frame
    if drop:
        return frame.filter(first)
    count = int((~first).sum())
    row = _first_row(frame, ~first)
    dup = frame.filter(pl.col("_row") == row).row(0, named=True)
    same = frame.filter(*(pl.col(c) == dup[c] for c in EVENT_COLUMNS))
    original = int(same.get_column("_row")[0])
    raise FreshsidError(
        f"{source.path} has {count} exact duplicate event(s), the first at {source.where(row, bare=True)} "
        f"repeating {source.where(original, bare=True)}; pass --drop-duplicates to keep one copy."
    )


def _missing_column(path: Path, role: str, column: str, header: list[str]) -> str:
    shown = ", ".join(repr(h) for h in header[:8]) + (", ..." if len(header) > 8 else "")
    if header and all(_looks_like_value(h) for h in header):
        fix = "the file seems to lack a header line, so add one naming the columns"
    else:
        fix = f"name its {role.replace('_', ' ')} column with --columns USER,ITEM,TIME (LogSchema in Python)"
    return f"{path} has no column {column!r} (it has {shown}); {fix}."


def _looks_like_value(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_catalog(paths: str | Path | Sequence[str | Path], *, key: str = "item_id") -> pl.DataFrame:
    """Item metadata from one or more files, merged on ``key`` (or ``asin``).

    Returns ``item_id`` (when the files have ``key``) and/or ``asin``, plus whichever of
    title, categories, brand, attributes the files hold (strings, '' where unknown).
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    merged: pl.DataFrame | None = None
    for path in paths:
        frame = _read_catalog_file(path, key=key)
        if merged is None:
            merged = frame
            continue
        common = [c for c in ("item_id", "asin") if c in merged.columns and c in frame.columns]
        if not common:
            raise FreshsidError(
                f"Item file {path} shares no key column with {paths[0]}; give both an {key!r} or 'asin' column."
            )
        extra = [c for c in frame.columns if c not in merged.columns or c == common[0]]
        merged = merged.join(frame.select(extra), on=common[0], how="full", coalesce=True)
    assert merged is not None, "read_catalog needs at least one path"
    return merged.with_columns(pl.col(c).fill_null("") for c in TEXT_COLUMNS if c in merged.columns)


def _read_catalog_file(path: Path, *, key: str) -> pl.DataFrame:
    source = Source.open(path, separator=None)
    header = read_header(source)
    keys = {key: "item_id"} if key in header else {}
    if "asin" in header:
        keys["asin"] = "asin"
    if not keys:
        raise FreshsidError(f"Item file {path} has no {key!r} or 'asin' column; add one to key the items.")
    texts = [c for c in TEXT_COLUMNS if c in header]
    frame = read_table(source, [*keys, *texts], as_text=True).rename(keys)
    first_key = next(iter(keys.values()))
    frame = frame.filter(pl.col(first_key).is_not_null()).with_columns(pl.col(first_key).str.strip_chars())
    if "categories" in frame.columns:
        frame = frame.with_columns(clean_categories(pl.col("categories")))
    return frame.unique(first_key, keep="first", maintain_order=True)


def clean_categories(expr: pl.Expr) -> pl.Expr:
    """``'Beauty', 'Makeup'`` (a Python list printed into a cell, maybe CSV-quoted) -> ``Beauty, Makeup``."""
    return (
        expr.str.replace_all('"', "", literal=True)
        .str.replace_all(r"(^|, )'", "${1}")
        .str.replace_all(r"'(, |$)", "${1}")
    )


def _names(paths: str | Path | Sequence[str | Path] | None) -> str:
    if paths is None or isinstance(paths, (str, Path)):
        return str(paths)
    return ", ".join(str(p) for p in paths)


__all__ = [
    "LogSchema",
    "load_logs",
    "read_events",
    "validate_events",
    "events_to_interactions",
    "read_catalog",
    "clean_categories",
    "MAX_TIMESTAMP",
]
