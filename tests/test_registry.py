"""The benchmarks registry: published counts, folder lookup, original-format readers, synthetic cache."""

import gzip
import json

import numpy as np
import pytest

from freshsid.artifacts import MANIFEST
from freshsid.data.registry import KNOWN_DATASETS, data_root, load_dataset, synthetic_dataset
from freshsid.data.synthetic import SyntheticConfig
from freshsid.data.temporal import TemporalSplit
from freshsid.errors import FreshsidError

AMAZON_ROOT = data_root() / "amazon2014"
needs_amazon = pytest.mark.skipif(
    not (AMAZON_ROOT / "beauty" / "interactions.tsv.gz").is_file(),
    reason=f"benchmark data not found at {AMAZON_ROOT} (set FRESHSID_DATA to run these)",
)

# Published 5-core statistics (McAuley et al. 2015; TIGER, Rajput et al. 2023).
PUBLISHED = {
    "amazon-beauty": (22_363, 12_101, 198_502),
    "amazon-sports": (35_598, 18_357, 296_337),
    "amazon-toys": (19_412, 11_924, 167_597),
}


@needs_amazon
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_amazon_counts_match_published_and_parts_are_whole_days_of_near_equal_count(name, monkeypatch):
    monkeypatch.delenv("FRESHSID_DATA", raising=False)
    logs = load_dataset(name)
    assert (logs.n_users, logs.n_items, logs.n_events) == PUBLISHED[name]
    assert logs.name == name
    split = TemporalSplit(logs, n_parts=10)
    sizes = split.part_sizes()
    assert len(sizes) == 10 and sizes.sum() == logs.n_events and sizes.max() - sizes.min() < 0.03 * logs.n_events / 10
    cuts = split.bounds[1:-1]
    assert (logs.ts[cuts - 1] < logs.ts[cuts]).all()  # the timestamps are day-granular: no day in two parts
    assert bool(np.all(np.diff(logs.ts) >= 0))
    # Every item carries some text: titles on Beauty, attributes everywhere.
    assert (logs.items.get_column("attributes") != "").all()


@needs_amazon
def test_beauty_metadata_matches_the_readme():
    items = load_dataset("amazon-beauty").items
    assert items.height == 12_101
    assert (items.get_column("title") == "").sum() == 7
    assert (items.get_column("brand") == "").sum() == 2_098


@needs_amazon
def test_data_dir_env_and_category_folder_are_all_found(monkeypatch):
    monkeypatch.setenv("FRESHSID_DATA", str(AMAZON_ROOT.parent))
    assert load_dataset("amazon-toys").n_events == PUBLISHED["amazon-toys"][2]
    direct = load_dataset("amazon-toys", data_dir=AMAZON_ROOT / "toys")
    assert direct.n_events == PUBLISHED["amazon-toys"][2]
    unnamed = load_dataset(data_dir=AMAZON_ROOT / "toys")
    assert unnamed.name == "toys" and unnamed.n_users == PUBLISHED["amazon-toys"][0]
    # Another category's folder never passes for this one.
    with pytest.raises(FreshsidError, match="No amazon-beauty data"):
        load_dataset("amazon-beauty", data_dir=AMAZON_ROOT / "toys")


def _gz(path, lines):
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def _amazon_originals(folder):
    reviews = [
        {"reviewerID": "A1", "asin": "B01", "reviewerName": "x", "overall": 5.0, "unixReviewTime": 1300000000},
        {"reviewerID": "A2", "asin": "B02", "helpful": [0, 1], "unixReviewTime": 1200000000},
        {"reviewerID": "A1", "asin": "B02", "unixReviewTime": 1300000000},
    ]
    _gz(folder / "reviews_Beauty_5.json.gz", [json.dumps(r) for r in reviews])
    meta = [
        "{'asin': 'B01', 'title': \"Men's Soap\", 'brand': 'Acme', 'categories': [['Beauty', 'Bath']], 'price': 3.5}",
        "{'asin': 'B99', 'title': 'not in the reviews'}",
        "{'asin': 'B02', 'categories': [['Beauty', 'Hair Care'], ['Other']], 'related': {'also_bought': ['B01']}}",
    ]
    _gz(folder / "meta_Beauty.json.gz", meta)


def test_amazon_original_files_by_name_and_by_path(tmp_path):
    _amazon_originals(tmp_path)
    logs = load_dataset("amazon-beauty", data_dir=tmp_path)
    assert logs.name == "amazon-beauty" and logs.n_events == 3
    # Time order with file order on ties: A2-B02 (1.2e9), then A1-B01, A1-B02 (both 1.3e9).
    pairs = list(zip(logs.user_ids[logs.user], logs.item_ids[logs.item], strict=True))
    assert pairs == [("A2", "B02"), ("A1", "B01"), ("A1", "B02")]
    meta = {r["item_id"]: r for r in logs.items.iter_rows(named=True)}
    assert meta["B01"]["title"] == "Men's Soap" and meta["B01"]["brand"] == "Acme"
    assert meta["B01"]["categories"] == "Beauty, Bath" and meta["B02"]["categories"] == "Beauty, Hair Care"
    by_path = load_dataset(logs=tmp_path / "reviews_Beauty_5.json.gz", items=tmp_path / "meta_Beauty.json.gz")
    assert by_path.n_events == 3 and by_path.item_text() == logs.item_text()


def test_amazon_original_bad_lines_are_named(tmp_path):
    _gz(tmp_path / "reviews_Toys_and_Games_5.json.gz", ['{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 5}', "{oops"])
    with pytest.raises(FreshsidError, match="line 2 is not a JSON object"):
        load_dataset(logs=tmp_path / "reviews_Toys_and_Games_5.json.gz")
    _gz(tmp_path / "meta_Toys_and_Games.json.gz", ["{'asin': 'B1', 'title': 'ok'", "x"])
    good = ['{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 5}', '{"reviewerID": "A2", "asin": "B1", "unixReviewTime": 6}']
    _gz(tmp_path / "reviews_Toys_and_Games_5.json.gz", good)
    with pytest.raises(FreshsidError, match="line 1 is not a Python dict"):
        load_dataset(logs=tmp_path / "reviews_Toys_and_Games_5.json.gz", items=tmp_path / "meta_Toys_and_Games.json.gz")


def test_movielens_1m_layout_from_a_folder(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978300700\n2::10::4::978300800\n")
    (tmp_path / "movies.dat").write_bytes("10::Am\xe9lie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n".encode("latin-1"))
    logs = load_dataset(data_dir=tmp_path)
    assert logs.n_events == 3 and logs.ts.tolist() == [978300700, 978300760, 978300800]
    meta = {r["item_id"]: r for r in logs.items.iter_rows(named=True)}
    assert meta[10]["title"] == "Amélie (2001)" and meta[10]["categories"] == "Comedy, Romance"


def test_movielens_100k_layout_by_path(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250950\n")
    flags = "|".join(["0"] * 19)
    genre = "|".join(["0", "0", "0", "0", "0", "1"] + ["0"] * 13)
    (tmp_path / "u.item").write_text(f"242|Kolya (1996)|24-Jan-1997||http://x|{genre}\n302|L.A. (1997)|01-Jan-1997||http://y|{flags}\n")
    logs = load_dataset(logs=tmp_path / "u.data", items=tmp_path / "u.item")
    assert logs.n_users == 2 and logs.n_items == 2
    meta = {r["item_id"]: r for r in logs.items.iter_rows(named=True)}
    assert meta[242]["title"] == "Kolya (1996)" and meta[242]["categories"] == "Comedy"


def test_movielens_ragged_ratings_are_refused(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3\n")
    with pytest.raises(FreshsidError, match=r"ratings.dat line 2 has 3 fields"):
        load_dataset(data_dir=tmp_path)


def test_generic_folder_layout(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\n1,5,10\n2,6,20\n")
    (tmp_path / "items.csv").write_text("item_id,title\n5,Five\n6,Six\n")
    logs = load_dataset(data_dir=tmp_path)
    assert logs.item_text() == ["Five", "Six"]


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(FreshsidError, match="known datasets are " + ", ".join(KNOWN_DATASETS)):
        load_dataset("amazon-books")
    with pytest.raises(FreshsidError, match="pass --data-dir or set FRESHSID_DATA"):
        load_dataset("amazon-sports", data_dir=tmp_path)
    with pytest.raises(FreshsidError, match="holds no recognised log"):
        load_dataset(data_dir=tmp_path)
    with pytest.raises(FreshsidError, match="name a dataset"):
        load_dataset()
    with pytest.raises(FreshsidError, match="--items needs --logs"):
        load_dataset("amazon-beauty", items=tmp_path / "i.csv")
    _gz(tmp_path / "reviews_Beauty_5.json.gz", ["{}"])
    _gz(tmp_path / "reviews_Toys_and_Games_5.json.gz", ["{}"])
    with pytest.raises(FreshsidError, match="several review files"):
        load_dataset(data_dir=tmp_path)


def test_synthetic_is_generated_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESHSID_CACHE", str(tmp_path))
    first = load_dataset("synthetic")
    assert first.name == "synthetic" and first.n_events == SyntheticConfig().n_events
    (folder,) = (tmp_path / "synthetic").iterdir()
    stamp = (folder / MANIFEST).stat().st_mtime_ns
    again = load_dataset("synthetic")
    assert (folder / MANIFEST).stat().st_mtime_ns == stamp
    assert np.array_equal(first.item, again.item) and np.array_equal(first.ts, again.ts)
    # A damaged cache entry is regenerated, not served.
    (folder / "interactions.parquet").write_bytes(b"garbage")
    assert np.array_equal(load_dataset("synthetic").user, first.user)


def test_synthetic_small_config_and_duplicate_policy(tmp_path):
    cfg = SyntheticConfig(n_users=50, n_items=40, n_events=3_000, span_days=10)
    kept = synthetic_dataset(cfg, cache_dir=tmp_path)
    dropped = synthetic_dataset(cfg, cache_dir=tmp_path, duplicates="drop")
    assert kept.n_events == 3_000 and dropped.n_events <= kept.n_events
    with pytest.raises(FreshsidError, match="--data-dir and --columns do not apply"):
        load_dataset("synthetic", data_dir=tmp_path)
