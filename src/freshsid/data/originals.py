"""Readers for public data sets in the form their authors distribute them.

Someone holding the originals needs no conversion step:

- Amazon Reviews 2014 (McAuley et al.): ``reviews_<Category>_5.json.gz``, one JSON
  object per line (``reviewerID``, ``asin``, ``unixReviewTime``), and
  ``meta_<Category>.json.gz``, one *Python literal* dict per line (``asin``,
  ``title``, ``brand``, ``categories``).
- MovieLens 1M/10M ``ratings.dat`` (``user::item::rating::ts``, catalog
  ``movies.dat``) and MovieLens 100K ``u.data`` (tab-separated, catalog ``u.item``).

Files are recognised by name; every reader ends in the same validation as
:func:`freshsid.data.logs.load_logs`.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import polars as pl

from freshsid.data.interactions import Interactions
from freshsid.data.logs import Duplicates, events_to_interactions, validate_events
from freshsid.data.tables import Source, read_bytes, read_table
from freshsid.errors import FreshsidError

AMAZON_REVIEWS = re.compile(r"^reviews_(.+?)(_5)?\.json(\.gz)?$")
AMAZON_META = re.compile(r"^meta_(.+?)\.json(\.gz)?$")
ML_RATINGS = {"ratings.dat": "movies.dat", "u.data": "u.item"}
# MovieLens 100K flags genres as 19 binary columns of u.item, in this order (u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ASIN = re.compile(rb"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def is_original(path: Path) -> bool:
    """Whether ``path`` is named like an original Amazon or MovieLens event file."""
    return bool(AMAZON_REVIEWS.match(path.name)) or path.name in ML_RATINGS


def load_original(
    logs: Path, *, items: Path | None = None, duplicates: Duplicates = "error", name: str | None = None
) -> Interactions:
    """Load an original Amazon reviews or MovieLens ratings file (and its catalog)."""
    if AMAZON_REVIEWS.match(logs.name):
        events = read_amazon_reviews(logs, duplicates=duplicates)
        if items is None:
            catalog = None
        elif AMAZON_META.match(items.name):
            catalog = read_amazon_meta(items, asins={str(a) for a in events.get_column("item_id").to_list()})
        else:
            raise FreshsidError(f"Item file {items} is not an Amazon meta_<Category>.json.gz; pass the matching one.")
        category = AMAZON_REVIEWS.match(logs.name).group(1)  # type: ignore[union-attr]
        return events_to_interactions(events, catalog=catalog, name=name or f"amazon-{category.lower()}")
    if logs.name in ML_RATINGS:
        events = read_movielens_ratings(logs, duplicates=duplicates)
        catalog = read_movielens_items(items) if items is not None else None
        return events_to_interactions(events, catalog=catalog, name=name or "movielens")
    raise FreshsidError(f"{logs} is not a known original file name (reviews_*_5.json.gz, ratings.dat, u.data).")


def read_amazon_reviews(path: Path, *, duplicates: Duplicates = "error") -> pl.DataFrame:
    """Events of a ``reviews_<Category>[_5].json[.gz]`` file, in file order."""
    data = read_bytes(path)
    source = Source(path, "text", data, has_header=False)
    schema = {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.String}
    try:
        frame = pl.read_ndjson(data, schema=schema)
    except pl.exceptions.ComputeError:
        raise FreshsidError(_bad_json_line(path, data)) from None
    frame = frame.rename({"reviewerID": "user_id", "asin": "item_id", "unixReviewTime": "timestamp"})
    return validate_events(frame, source, duplicates=duplicates)


def _bad_json_line(path: Path, data: bytes) -> str:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return f"{path} line {number} is not a JSON object; fix or delete that line."
        if not isinstance(obj, dict):
            return f"{path} line {number} is not a JSON object; fix or delete that line."
    return f"{path} is not JSON lines (one object per line); pass the original reviews file."


def read_amazon_meta(path: Path, *, asins: set[str] | None = None) -> pl.DataFrame:
    """Catalog of a ``meta_<Category>.json.gz`` file: item_id (asin), title, brand, categories.

    Lines are Python literals, not JSON, so each is read with ``ast.literal_eval``;
    only the ``asins`` asked for are parsed (the meta files hold many more items).
    """
    rows: list[dict[str, str]] = []
    for number, line in enumerate(read_bytes(path).splitlines(), start=1):
        found = _ASIN.search(line)
        if not line.strip() or (asins is not None and (found is None or found.group(1).decode() not in asins)):
            continue
        record = _literal(line, path, number)
        categories = record.get("categories") or [[]]
        first = categories[0] if categories and isinstance(categories[0], list) else categories
        rows.append(
            {
                "item_id": str(record.get("asin", "")),
                "title": str(record.get("title") or ""),
                "brand": str(record.get("brand") or ""),
                "categories": ", ".join(str(c) for c in first),
            }
        )
    schema = {"item_id": pl.String, "title": pl.String, "brand": pl.String, "categories": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _literal(line: bytes, path: Path, number: int) -> dict:
    text = line.decode("utf-8", "replace")
    try:
        record = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            record = json.loads(text)  # the 2018 release writes strict JSON
        except ValueError:
            record = None
    if not isinstance(record, dict):
        raise FreshsidError(f"{path} line {number} is not a Python dict literal; pass the original meta file.")
    return record


def read_movielens_ratings(path: Path, *, duplicates: Duplicates = "error") -> pl.DataFrame:
    """Events of ``ratings.dat`` (``::``-separated) or ``u.data`` (tab-separated); ratings dropped."""
    data = read_bytes(path)
    if path.name == "ratings.dat":
        # Every field is numeric, so a two-byte separator can become a tab safely.
        data = data.replace(b"::", b"\t")
    source = Source(path, "text", data, separator="\t", has_header=False, n_fields=4)
    frame = read_table(source, [])
    if frame.width != 4:
        raise FreshsidError(
            f"{path} has {frame.width} fields per line, not 4 (user, item, rating, timestamp); pass the original file."
        )
    frame = frame.select(
        pl.col(frame.columns[0]).alias("user_id"),
        pl.col(frame.columns[1]).alias("item_id"),
        pl.col(frame.columns[3]).alias("timestamp"),
    )
    return validate_events(frame, source, duplicates=duplicates)


def read_movielens_items(path: Path) -> pl.DataFrame:
    """Catalog of ``movies.dat`` (``id::title::genres``) or ``u.item`` (``|``-separated, genre flags)."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # MovieLens 1M/100K titles are Latin-1
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if path.name == "u.item":
            fields = line.split("|")
            flags = fields[5:]
            genres = [g for g, f in zip(ML100K_GENRES, flags, strict=False) if f == "1"]
        else:
            fields = line.split("::")
            genres = fields[2].split("|") if len(fields) > 2 else []
        if len(fields) < 2 or not fields[0].strip():
            raise FreshsidError(f"{path} line {number} has no item id and title; pass the original MovieLens file.")
        rows.append({"item_id": fields[0].strip(), "title": fields[1], "categories": ", ".join(genres)})
    return pl.DataFrame(rows, schema={"item_id": pl.String, "title": pl.String, "categories": pl.String})
