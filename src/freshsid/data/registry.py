"""Named data sets and the one entry point that loads any of them.

- ``amazon-beauty``, ``amazon-sports``, ``amazon-toys``: Amazon Reviews 2014 5-core,
  read from ``<data root>/amazon2014/<category>/`` (the freshsid TSV layout) or from
  the authors' ``reviews_<Category>_5.json.gz`` (+ ``meta_<Category>.json.gz``).
  The data root is ``data_dir``, else ``$FRESHSID_DATA``, else ``../shared/data``
  relative to the project root.
- ``synthetic``: the embedded drifting catalog, generated from ``SyntheticConfig()``
  once and cached as an artifact under ``.cache/synthetic/<fingerprint>/`` in the
  project (``$FRESHSID_CACHE`` or the system temp folder when there is no project
  checkout), so a fresh clone works offline.
- any log file via ``logs=PATH`` (+ ``items=PATH``), or any folder via ``data_dir``
  alone; original Amazon and MovieLens files are recognised by name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from freshsid.artifacts import artifact_dir, finish_manifest, fingerprint_of, read_manifest
from freshsid.data.interactions import Interactions
from freshsid.data.layouts import layout_of, load_layout
from freshsid.data import synthetic
from freshsid.data.logs import Duplicates, LogSchema, load_logs
from freshsid.data.originals import AMAZON_REVIEWS, ML_RATINGS, is_original, load_original
from freshsid.data.synthetic import SyntheticConfig
from freshsid.data.tables import PARQUET_SUFFIXES, TEXT_SUFFIXES, split_suffix
from freshsid.errors import FreshsidError

# name -> (folder under amazon2014/, category in the authors' file names)
AMAZON = {
    "amazon-beauty": ("beauty", "Beauty"),
    "amazon-sports": ("sports", "Sports_and_Outdoors"),
    "amazon-toys": ("toys", "Toys_and_Games"),
}
SYNTHETIC = "synthetic"
KNOWN_DATASETS = (*AMAZON, SYNTHETIC)
CATALOG_STEMS = ("items", "item_attributes")


def load_dataset(
    name: str | None = None,
    *,
    data_dir: str | Path | None = None,
    logs: str | Path | None = None,
    items: str | Path | None = None,
    schema: LogSchema | None = None,
    drop_duplicates: bool = False,
    where: str | None = None,
) -> Interactions:
    """Load a named data set, a data folder, or a log file into :class:`Interactions`.

    Exact duplicate events are refused unless ``drop_duplicates`` (see :mod:`freshsid.data.logs`).
    ``logs`` in the Yambda or VK-LSVD layout (a parquet file, or VK-LSVD's folder of weekly
    shards) is recognised and streamed; ``where`` is a SQL condition over its columns that
    chooses the events that count (:mod:`freshsid.data.layouts`).

    Examples:
        >>> import freshsid
        >>> logs = freshsid.load_dataset("synthetic")
        >>> logs.n_events > 0 and logs.n_users > 0
        True
        >>> listens = freshsid.load_dataset(logs="yambda/flat/50m/multi_event.parquet",
        ...                                 where="event_type = 'listen' AND is_organic = 1")  # doctest: +SKIP
    """
    dup: Duplicates = "drop" if drop_duplicates else "error"
    if name is not None and logs is not None:
        raise FreshsidError(f"Both a dataset ({name}) and --logs were given; pass one of them.")
    if where is not None and logs is None:
        raise FreshsidError("--where filters the events of a Yambda or VK-LSVD file given by --logs; add --logs PATH.")
    if logs is not None:
        if data_dir is not None:
            raise FreshsidError("Both --logs and --data-dir were given; pass one of them.")
        return load_file(Path(logs), items=None if items is None else Path(items), schema=schema, duplicates=dup,
                         where=where)
    if items is not None:
        raise FreshsidError("--items needs --logs (a named dataset or folder brings its own catalog); add --logs PATH.")
    if name is None:
        if data_dir is None:
            raise FreshsidError(f"No data given; name a dataset ({', '.join(KNOWN_DATASETS)}) or pass --logs PATH.")
        folder = Path(data_dir)
        return load_folder(folder, name=folder.name, schema=schema, duplicates=dup)
    if name == SYNTHETIC:
        if data_dir is not None or schema is not None:
            raise FreshsidError("The synthetic dataset is generated, so --data-dir and --columns do not apply; drop them.")
        # Repeats within a synthetic day are events of the generator's model, not logging errors.
        return synthetic_dataset(duplicates="drop" if drop_duplicates else "keep")
    if name not in AMAZON:
        known = ", ".join(KNOWN_DATASETS)
        raise FreshsidError(f"Unknown dataset {name!r}; known datasets are {known} (or pass --logs PATH).")
    folder, category = _find_amazon(name, data_dir)
    return load_folder(folder, name=name, schema=schema, duplicates=dup, category=category)


def load_file(
    logs: Path, *, items: Path | None = None, schema: LogSchema | None = None, duplicates: Duplicates = "error",
    where: str | None = None,
) -> Interactions:
    """A single log file: an original Amazon/MovieLens file by name, a Yambda or VK-LSVD
    layout by its columns, else CSV/TSV/parquet."""
    layout = layout_of(logs) if logs.exists() else None
    if layout is not None:
        if schema is not None or items is not None:
            raise FreshsidError(f"{logs} is in the {layout} layout, whose columns are fixed; drop --columns/--sep/--items.")
        return load_layout(logs, layout, where=where)
    if where is not None:
        raise FreshsidError(f"--where applies to Yambda and VK-LSVD logs, and {logs} is in neither layout; drop it.")
    if is_original(logs):
        if schema is not None:
            raise FreshsidError(f"{logs} is an original {logs.name} file with fixed columns; drop the column options.")
        return load_original(logs, items=items, duplicates=duplicates)
    return load_logs(logs, schema=schema, items=items, duplicates=duplicates)


def load_folder(
    folder: Path,
    *,
    name: str,
    schema: LogSchema | None = None,
    duplicates: Duplicates = "error",
    category: str | None = None,
) -> Interactions:
    """A data folder, recognised by its file names (see :func:`find_layout`)."""
    logs, catalogs = find_layout(folder, category=category)
    if logs is None:
        raise FreshsidError(
            f"{folder} holds no recognised log (interactions.tsv.gz/.csv/.parquet, reviews_*_5.json.gz, "
            "ratings.dat or u.data); pass the log file with --logs."
        )
    if is_original(logs):
        if schema is not None:
            raise FreshsidError(f"{logs} is an original {logs.name} file with fixed columns; drop the column options.")
        return load_original(logs, items=catalogs[0] if catalogs else None, duplicates=duplicates, name=name)
    return load_logs(logs, schema=schema, items=catalogs or None, duplicates=duplicates, name=name)


def find_layout(folder: Path, *, category: str | None = None) -> tuple[Path | None, list[Path]]:
    """(log file, catalog files) in ``folder``; ``category`` picks Amazon originals by name.

    Recognised, in this order: ``interactions.<ext>`` with ``items.<ext>`` and
    ``item_attributes.<ext>``; ``reviews_<Category>_5.json.gz`` with
    ``meta_<Category>.json.gz``; ``ratings.dat`` with ``movies.dat``; ``u.data`` with ``u.item``.
    """
    if not folder.exists():
        raise FreshsidError(f"Data folder {folder} does not exist; pass --data-dir or set FRESHSID_DATA.")
    if not folder.is_dir():
        raise FreshsidError(f"{folder} is a file, not a data folder; pass it with --logs instead of --data-dir.")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    tables = {_table_stem(p): p for p in reversed(files) if _table_stem(p)}
    if "interactions" in tables:
        return tables["interactions"], [tables[s] for s in CATALOG_STEMS if s in tables]
    reviews = [p for p in files if (m := AMAZON_REVIEWS.match(p.name)) and category in (None, m.group(1))]
    if len(reviews) > 1:
        names = ", ".join(p.name for p in reviews)
        raise FreshsidError(f"{folder} holds several review files ({names}); pick one with --logs.")
    if reviews:
        stem = AMAZON_REVIEWS.match(reviews[0].name).group(1)  # type: ignore[union-attr]
        meta = [p for p in files if p.name in (f"meta_{stem}.json.gz", f"meta_{stem}.json")]
        return reviews[0], meta[:1]
    if category is not None:
        return None, []
    for ratings, catalog in ML_RATINGS.items():
        if (folder / ratings).is_file():
            return folder / ratings, [folder / catalog] if (folder / catalog).is_file() else []
    return None, []


def _table_stem(path: Path) -> str | None:
    """'interactions' for interactions.tsv.gz and the like; None for other files."""
    suffix, _ = split_suffix(path)
    if not suffix or (suffix not in TEXT_SUFFIXES and suffix not in PARQUET_SUFFIXES):
        return None
    stem = path.name.lower().split(".")[0]
    return stem if stem in ("interactions", *CATALOG_STEMS) else None


def _find_amazon(name: str, data_dir: str | Path | None) -> tuple[Path, str]:
    """The folder holding an Amazon category, in the freshsid layout or the original files."""
    sub, category = AMAZON[name]
    root = data_root(data_dir)
    for folder in (root / "amazon2014" / sub, root / sub, root):
        logs = find_layout(folder, category=category)[0] if folder.is_dir() else None
        # A generic interactions file in a folder named for another category must not pass for this one.
        if logs is not None and (folder.name == sub or is_original(logs)):
            return folder, category
    if not root.is_dir():
        raise FreshsidError(f"Data folder {root} for {name} does not exist; pass --data-dir or set FRESHSID_DATA.")
    raise FreshsidError(
        f"No {name} data under {root} (looked for amazon2014/{sub}/interactions.tsv.gz and "
        f"reviews_{category}_5.json.gz); pass --data-dir or set FRESHSID_DATA."
    )


def project_root() -> Path | None:
    """The source checkout holding this package (nearest folder with pyproject.toml), if any."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def data_root(data_dir: str | Path | None = None) -> Path:
    """Where named benchmarks live: ``data_dir``, ``$FRESHSID_DATA``, or ``<project>/../shared/data``."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get("FRESHSID_DATA"):
        return Path(os.environ["FRESHSID_DATA"])
    root = project_root() or Path.cwd()
    return (root / ".." / "shared" / "data").resolve()


def cache_root() -> Path:
    """Where generated data is cached: ``$FRESHSID_CACHE``, ``<project>/.cache``, or the temp folder."""
    if os.environ.get("FRESHSID_CACHE"):
        return Path(os.environ["FRESHSID_CACHE"])
    root = project_root()
    if root is not None and os.access(root, os.W_OK):
        return root / ".cache"
    return Path(tempfile.gettempdir()) / "freshsid-cache"


def synthetic_dataset(
    config: SyntheticConfig | None = None, *, cache_dir: Path | None = None, duplicates: Duplicates = "keep"
) -> Interactions:
    """The synthetic catalog for ``config`` (default ``SyntheticConfig()``), generated once and cached;
    ``duplicates`` as in :func:`freshsid.data.logs.load_logs`.

    The cache key covers the config and the generator's source, so editing the
    generator never serves stale data. A corrupted cache entry is regenerated.
    """
    cfg = config if config is not None else SyntheticConfig()
    code = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]
    key = fingerprint_of({"config": cfg.model_dump(), "generator": code})
    folder = (cache_dir or cache_root()) / "synthetic" / key
    try:
        read_manifest(folder, "synthetic-logs")
    except FreshsidError:
        with artifact_dir(folder) as tmp:
            synthetic.write_synthetic(cfg, tmp)
            info = {"generator": code}
            finish_manifest(tmp, kind="synthetic-logs", config=cfg.model_dump(), seed=cfg.seed, info=info)
    return load_logs(
        folder / "interactions.parquet",
        items=folder / "items.parquet",
        duplicates=duplicates,
        name=SYNTHETIC,
    )
