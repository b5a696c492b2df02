"""Open a tabular file whatever its container: plain or gzip text (CSV/TSV) or parquet.

One place checks that a path is readable, that its compression matches its name
(by magic bytes, not only the suffix) and that it parses, and maps a row back to
its line in the file so that error messages can point at it.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from freshsid.errors import FreshsidError

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None, "": None}
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED = "CSV/TSV (.csv, .tsv, .tab, .txt) or parquet (.parquet, .pq), optionally gzipped (.gz)"
# Other containers we can name, so the message says what the file really is.
FOREIGN_MAGIC = {
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"PK\x03\x04": "zip",
}
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
SNIFF_SEPARATORS = ("\t", ",", ";", "|")


def split_suffix(path: Path) -> tuple[str, bool]:
    """(format suffix, gzipped by name): ``a.tsv.gz`` -> (".tsv", True)."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    stem = name[:-3] if gzipped else name
    return Path(stem).suffix, gzipped


def table_name(path: Path) -> str:
    """A short label: the file name without compression and format suffixes."""
    suffix, gzipped = split_suffix(path)
    name = path.name[:-3] if gzipped else path.name
    return name[: len(name) - len(suffix)] if suffix else name


def check_readable(path: Path) -> None:
    """Refuse a missing path, a folder, a pipe or device (reading one could block or never
    end), or a file without read permission."""
    path = Path(path)
    if not path.exists():
        raise FreshsidError(f"{path} does not exist; check the path.")
    if path.is_dir():
        raise FreshsidError(f"{path} is a folder, not a file; pass a log file (or the folder with --data-dir).")
    if not path.is_file():
        raise FreshsidError(f"{path} is not a regular file (a pipe, socket or device); pass a file on disk.")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise FreshsidError(f"{path} cannot be read (permission denied); fix its permissions.") from None
    except OSError as exc:
        raise FreshsidError(f"{path} cannot be opened ({exc.strerror}); check the path.") from None


def read_bytes(path: Path) -> bytes:
    """The whole file, gunzipped when it is gzip (by magic bytes), after all checks."""
    check_readable(path)
    _, gz_name = split_suffix(path)
    data = path.read_bytes()
    if not data:
        raise FreshsidError(f"{path} is empty (0 bytes); point to a file with a header and events.")
    for magic, kind in FOREIGN_MAGIC.items():
        if data.startswith(magic):
            raise FreshsidError(f"{path} is {kind}-compressed; decompress it, or re-compress it with gzip.")
    if not data.startswith(GZIP_MAGIC):
        if gz_name:
            raise FreshsidError(f"{path} is named .gz but is not gzip data; rename it without .gz or gzip it.")
        return data
    try:
        data = gzip.decompress(data)
    except EOFError:
        raise FreshsidError(f"{path} is truncated gzip (the stream ends early); get or gzip it again.") from None
    except (OSError, zlib.error) as exc:
        raise FreshsidError(f"{path} is corrupt gzip ({exc}); download or compress it again.") from None
    if not data:
        raise FreshsidError(f"{path} is empty once decompressed; point to a file with a header and events.")
    return data


@dataclass
class Source:
    """A checked, decompressed file and how to point at its rows.

    ``data`` holds the text (or gzipped parquet) bytes; ``None`` for a plain parquet
    file, which polars reads from ``path``.
    """

    path: Path
    kind: str  # "text" or "parquet"
    data: bytes | None
    separator: str = ","
    has_header: bool = True
    n_fields: int = 0
    _line_starts: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, *, separator: str | None, has_header: bool = True) -> Source:
        path = Path(path)
        suffix, _ = split_suffix(path)
        if suffix not in TEXT_SUFFIXES and suffix not in PARQUET_SUFFIXES:
            raise FreshsidError(f"{path} has unsupported extension {suffix!r}; freshsid reads {SUPPORTED}.")
        check_readable(path)
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head == PARQUET_MAGIC:
            return cls(path, "parquet", None)
        data = read_bytes(path)
        if data.startswith(PARQUET_MAGIC):
            return cls(path, "parquet", data)
        if suffix in PARQUET_SUFFIXES:
            raise FreshsidError(f"{path} is not a parquet file (no PAR1 magic bytes); write it with a parquet writer.")
        first = _first_line(path, data)
        sep = separator or _sniff_separator(first, TEXT_SUFFIXES.get(suffix))
        return cls(path, "text", data, separator=sep, has_header=has_header)

    @property
    def fix_row(self) -> str:
        return "fix or delete that line" if self.kind == "text" else "fix that row"

    def where(self, row: int, *, bare: bool = False) -> str:
        """'PATH line N' for text (1-based, header counted) or 'PATH row N' for parquet."""
        if self.kind == "text":
            place = f"line {row + 1 + int(self.has_header)}"
        else:
            place = f"row {row + 1}"
        return place if bare else f"{self.path} {place}"

    def _line(self, row: int) -> bytes | None:
        if self.kind != "text" or self.data is None:
            return None
        if self._line_starts is None:
            ends = np.flatnonzero(np.frombuffer(self.data, dtype=np.uint8) == 10)
            self._line_starts = np.concatenate([[0], ends + 1])
        index = row + int(self.has_header)
        if index >= len(self._line_starts):
            return None
        start = int(self._line_starts[index])
        stop = int(self._line_starts[index + 1]) - 1 if index + 1 < len(self._line_starts) else len(self.data)
        return self.data[start:stop].rstrip(b"\r")

    def fields_on(self, row: int) -> int | None:
        """Number of fields on a data row's line (text only)."""
        line = self._line(row)
        if line is None:
            return None
        return len(next(csv.reader([line.decode("utf-8", "replace")], delimiter=self.separator), []))

    def is_blank(self, row: int) -> bool:
        line = self._line(row)
        return line is not None and not line.strip()


def _first_line(path: Path, data: bytes) -> str:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise FreshsidError(f"{path} line 1 is not UTF-8 text; save the file as UTF-8 CSV/TSV or parquet.") from None


def _sniff_separator(header: str, by_suffix: str | None) -> str:
    """The candidate that splits the header into the most fields; the suffix breaks ties."""
    counts = {sep: header.count(sep) for sep in SNIFF_SEPARATORS}
    best = max(counts.values())
    if best == 0:
        return by_suffix or ","
    if by_suffix is not None and counts.get(by_suffix) == best:
        return by_suffix
    return max(counts, key=counts.__getitem__)


def read_header(source: Source) -> list[str]:
    """Column names (and, for text, the expected number of fields per line)."""
    if source.kind == "parquet":
        try:
            names = list(pl.read_parquet_schema(_parquet_input(source)))
        except Exception as exc:  # polars/arrow raise several types for a bad footer
            raise FreshsidError(f"{source.path} is not a readable parquet file ({_first(exc)}); rewrite it.") from None
    else:
        assert source.data is not None
        first = _first_line(source.path, source.data)
        names = next(csv.reader([first], delimiter=source.separator), [])
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        where = "; ".join(f"{name!r} in columns {', '.join(str(i + 1) for i, n in enumerate(names) if n == name)}"
                          for name in repeated)
        raise FreshsidError(f"{source.path} header repeats column names ({where}); give every column its own name.")
    source.n_fields = len(names)
    return names


def read_table(source: Source, columns: list[str], *, as_text: bool = False) -> pl.DataFrame:
    """The named columns, in file order; text files give strings (no type guessing)."""
    if source.kind == "parquet":
        try:
            frame = pl.read_parquet(_parquet_input(source), columns=columns)
        except Exception as exc:
            raise FreshsidError(f"{source.path} is not a readable parquet file ({_first(exc)}); rewrite it.") from None
        return frame.with_columns(pl.all().cast(pl.String)) if as_text else frame
    assert source.data is not None
    try:
        return pl.read_csv(
            source.data,
            separator=source.separator,
            has_header=source.has_header,
            columns=columns if source.has_header else None,
            infer_schema=False,
            truncate_ragged_lines=False,
            raise_if_empty=False,
        )
    except pl.exceptions.ComputeError as exc:
        raise FreshsidError(_parse_problem(source, exc)) from None


def _parse_problem(source: Source, exc: Exception) -> str:
    text = str(exc)
    if "utf-8" in text.lower():
        return f"{source.path} is not UTF-8 text; save it as UTF-8 CSV/TSV or parquet."
    if "more fields" in text:
        line = _first_long_line(source)
        if line is not None:
            number, fields = line
            return (
                f"{source.path} line {number} has {fields} fields where the header has {source.n_fields}; "
                "fix or delete that line (or quote fields that contain the separator)."
            )
    sep = {"\t": "tab"}.get(source.separator, repr(source.separator))
    return f"{source.path} could not be parsed as {sep}-separated text ({_first(exc)}); check the file and --sep."


def _first_long_line(source: Source) -> tuple[int, int] | None:
    """(line number, field count) of the first line with more fields than the header."""
    assert source.data is not None
    text = io.StringIO(source.data.decode("utf-8", "replace"), newline="")
    reader = csv.reader(text, delimiter=source.separator)
    for record in reader:
        if reader.line_num > 1 and len(record) > source.n_fields:
            return reader.line_num, len(record)
    return None


def _parquet_input(source: Source) -> Path | io.BytesIO:
    return io.BytesIO(source.data) if source.data is not None else source.path


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
