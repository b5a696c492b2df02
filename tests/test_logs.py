"""Happy paths of the log and catalog loaders: every container, custom columns, tie order."""

import gzip
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshsid.data.interactions import from_arrays
from freshsid.data.logs import MAX_TIMESTAMP, LogSchema, load_logs, read_catalog, read_events
from freshsid.errors import FreshsidError

EVENTS = pl.DataFrame(
    {
        "user_id": ["u1", "u2", "u1", "u3", "u2", "u3"],
        "item_id": ["a", "b", "c", "a", "c", "b"],
        "timestamp": [30, 10, 10, 20, 10, 40],
    }
)


def _as_tuples(logs):
    return list(zip(logs.user_ids[logs.user], logs.item_ids[logs.item], logs.ts.tolist(), strict=True))


def _write(frame: pl.DataFrame, path: Path, *, sep: str = ",", gzipped: bool = False) -> Path:
    if path.suffix in (".parquet", ".pq") or path.name.endswith(".parquet.gz"):
        buffer = Path(tempfile.mktemp(suffix=".parquet"))
        frame.write_parquet(buffer)
        data = buffer.read_bytes()
        buffer.unlink()
    else:
        data = frame.write_csv(separator=sep).encode()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


EXPECTED = [("u2", "b", 10), ("u1", "c", 10), ("u2", "c", 10), ("u3", "a", 20), ("u1", "a", 30), ("u3", "b", 40)]


@pytest.mark.parametrize(
    ("name", "sep", "gzipped"),
    [
        ("logs.csv", ",", False),
        ("logs.tsv", "\t", False),
        ("logs.csv.gz", ",", True),
        ("logs.tsv.gz", "\t", True),
        ("logs.parquet", None, False),
        ("logs.parquet.gz", None, True),
        ("logs.txt", ";", False),  # separator sniffed from the header
        ("logs.csv", "\t", False),  # a .csv that is really tab-separated: sniffed, not assumed
        ("logs", ",", False),  # no extension at all
        ("logs.csv", ",", True),  # gzip detected by magic bytes, not by suffix
    ],
)
def test_every_container_gives_the_same_events(tmp_path, name, sep, gzipped):
    path = _write(EVENTS, tmp_path / name, sep=sep or ",", gzipped=gzipped)
    logs = load_logs(path)
    # Global time order; ties keep file order (u2-b, u1-c, u2-c all at t=10).
    assert _as_tuples(logs) == EXPECTED
    assert logs.name == "logs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_custom_columns_and_explicit_separator(tmp_path):
    frame = EVENTS.rename({"user_id": "uid", "item_id": "sku", "timestamp": "ts"}).with_columns(extra=pl.lit("x"))
    path = _write(frame, tmp_path / "log.txt", sep="|")
    logs = load_logs(path, schema=LogSchema(user="uid", item="sku", time="ts", separator="|"))
    assert _as_tuples(logs) == EXPECTED


def test_canonical_integer_ids_become_int64_but_zero_padded_stay_strings(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user_id,item_id,timestamp\n1,10,5\n2,11,6\n")
    logs = load_logs(path)
    assert logs.user_ids.dtype == np.int64 and logs.item_ids.tolist() == [10, 11]
    path.write_text("user_id,item_id,timestamp\n1,010,5\n2,11,6\n")
    assert load_logs(path).item_ids.tolist() == ["010", "11"]


def test_integral_floats_blank_lines_crlf_bom_and_spaces_are_accepted(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\r\n u1 ,a, 1318896000.0\r\n\r\nu2,b,1318896001\r\n\r\n")
    logs = load_logs(path)
    assert _as_tuples(logs) == [("u1", "a", 1318896000), ("u2", "b", 1318896001)]


def test_parquet_typed_columns_float_and_datetime_timestamps(tmp_path):
    floats = pl.DataFrame({"user_id": [1, 2, 3], "item_id": [7, 8, 7], "timestamp": [5.0, 3.0, 4.0]})
    floats.write_parquet(tmp_path / "f.parquet")
    assert load_logs(tmp_path / "f.parquet").ts.tolist() == [3, 4, 5]
    stamps = [datetime(2020, 1, 2), datetime(2020, 1, 1), datetime(2020, 1, 3)]
    dated = floats.with_columns(timestamp=pl.Series(stamps))
    dated.write_parquet(tmp_path / "d.parquet")
    assert load_logs(tmp_path / "d.parquet").ts.tolist() == [1577836800, 1577923200, 1578009600]


def test_duplicates_refused_dropped_or_kept(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,a,1\nv,a,1\n")
    with pytest.raises(FreshsidError, match=r"1 exact duplicate.*line 4 repeating line 2"):
        load_logs(path)
    dropped = load_logs(path, duplicates="drop")
    assert _as_tuples(dropped) == [("u", "a", 1), ("v", "a", 1), ("u", "b", 2)]
    assert load_logs(path, duplicates="keep").n_events == 4


def test_read_events_keeps_extra_columns_in_file_order(tmp_path):
    path = tmp_path / "e.tsv"
    path.write_text("user_id\tasin\titem_id\ttimestamp\n1\tB1\t5\t9\n2\tB2\t6\t3\n")
    events = read_events(path, extra=("asin", "missing"))
    assert events.columns == ["user_id", "item_id", "timestamp", "asin"]
    assert events.get_column("asin").to_list() == ["B1", "B2"]


def test_catalogs_join_by_item_id_and_by_asin(tmp_path):
    logs_path = tmp_path / "interactions.tsv"
    logs_path.write_text("user_id\titem_id\tasin\ttimestamp\n1\t1\tB01\t5\n2\t2\tB02\t6\n1\t3\tB03\t7\n")
    items = tmp_path / "items.tsv"
    items.write_text("item_id\tasin\ttitle\tcategories\tbrand\n1\tB01\tLipstick\t\"'Beauty', 'Makeup'\"\tAcme\n")
    attributes = tmp_path / "item_attributes.tsv.gz"
    attributes.write_bytes(gzip.compress(b"asin\tattributes\nB02\tHair|Shampoo\nB01\tAcme|Makeup\n"))
    logs = load_logs(logs_path, items=[items, attributes])
    rows = {r["item_id"]: r for r in logs.items.iter_rows(named=True)}
    assert rows[1]["title"] == "Lipstick" and rows[1]["categories"] == "Beauty, Makeup"
    assert rows[1]["attributes"] == "Acme|Makeup" and rows[2]["attributes"] == "Hair|Shampoo"
    assert rows[3]["title"] == "" and rows[3]["attributes"] == ""
    # The attributes file alone joins through the log's asin column.
    only = load_logs(logs_path, items=attributes)
    assert only.item_text()[logs.item_ids.tolist().index(2)] == "Hair|Shampoo"


def test_read_catalog_merges_files_and_cleans_categories(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("item_id,title,categories\n1,X,\"'Toys', \"\"Kids'\"\" Games\"\n")
    catalog = read_catalog(a)
    assert catalog.row(0, named=True) == {"item_id": "1", "title": "X", "categories": "Toys, Kids' Games"}


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["a", "b", "c", "x y"]), st.integers(0, MAX_TIMESTAMP)),
        min_size=2,
        max_size=40,
    )
)
def test_csv_round_trip_equals_from_arrays(rows):
    """Property: writing events to CSV and loading them equals building from the arrays."""
    rows = list(dict.fromkeys(rows))  # the loader refuses exact duplicates
    if len(rows) < 2:
        return
    users, items, ts = (np.array(c) for c in zip(*rows, strict=True))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.csv"
        pl.DataFrame({"user_id": users, "item_id": items, "timestamp": ts}).write_csv(path)
        loaded = load_logs(path)
    direct = from_arrays(users, items, ts)
    assert _as_tuples(loaded) == _as_tuples(direct)
    assert np.array_equal(loaded.user, direct.user) and np.array_equal(loaded.item, direct.item)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62) | st.integers(0, 30), min_size=1, max_size=60))
def test_dense_ids_follow_first_appearance(values):
    """Property: the loader's integer fast path densifies exactly like a brute-force scan."""
    ids = np.array(values, dtype=np.int64)
    logs = from_arrays(ids, ids, np.zeros(len(ids), dtype=np.int64))
    order = list(dict.fromkeys(values))
    assert logs.user_ids.tolist() == order
    assert logs.user.tolist() == [order.index(v) for v in values]
