"""Yambda and VK-LSVD logs, in files the test writes in exactly the published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import freshsid
from freshsid.cli import app
from freshsid.data.layouts import layout_of, vk_item_embeddings
from freshsid.errors import FreshsidError
from typer.testing import CliRunner

runner = CliRunner()
EVENT_TYPES = np.array(["listen", "like", "dislike", "unlike", "undislike"])


def write_yambda(path: Path, n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """multi_event.parquet as Yambda publishes it: sorted by uid, then timestamp."""
    rng = np.random.default_rng(seed)
    uid = rng.integers(100, 130, n).astype(np.uint32)
    ts = rng.integers(0, 50_000, n).astype(np.uint32)
    order = np.lexsort((ts, uid))
    uid, ts = uid[order], ts[order]
    kind = EVENT_TYPES[rng.choice(5, n, p=[0.8, 0.1, 0.04, 0.03, 0.03])]
    listen = kind == "listen"
    ratio = np.where(listen, rng.integers(1, 160, n), 0).astype(np.uint16)
    columns = {
        "uid": uid, "timestamp": ts, "item_id": rng.integers(1, 60, n).astype(np.uint32),
        "is_organic": rng.integers(0, 2, n).astype(np.uint8),
        "played_ratio_pct": pa.array(ratio, mask=~listen), "track_length_seconds": pa.array(
            rng.integers(60, 400, n).astype(np.uint32), mask=~listen),
        "event_type": kind,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return {"uid": uid, "ts": ts, "kind": kind, "ratio": ratio, "organic": columns["is_organic"]}


def write_vk(root: Path, weeks=((0, "train"), (1, "train"), (2, "validation")), rows: int = 150, seed: int = 0):
    """interactions/<split>/week_NN.parquet (rows in time order, no timestamp column) and
    metadata/item_embeddings.npz."""
    rng = np.random.default_rng(seed)
    written = []
    for week, split in weeks:
        frame = {
            "user_id": rng.integers(0, 25, rows).astype(np.uint32), "item_id": rng.integers(0, 40, rows).astype(np.uint32),
            "place": rng.integers(0, 24, rows).astype(np.uint8), "platform": rng.integers(0, 11, rows).astype(np.uint8),
            "agent": rng.integers(0, 29, rows).astype(np.uint8), "timespent": rng.integers(0, 60, rows).astype(np.uint8),
            "like": rng.random(rows) < 0.1, "dislike": rng.random(rows) < 0.01, "share": rng.random(rows) < 0.02,
            "bookmark": rng.random(rows) < 0.01, "click_on_author": rng.random(rows) < 0.01,
            "open_comments": rng.random(rows) < 0.05,
        }
        folder = root / "interactions" / split
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(frame), folder / f"week_{week:02d}.parquet")
        written.append(frame)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    ids = np.arange(0, 40, dtype=np.uint32)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    np.savez(root / "metadata" / "item_embeddings.npz", item_id=ids, embedding=vectors)
    return written, vectors


def test_yambda_counts_listen_plus_by_default_and_follows_where(tmp_path):
    raw = write_yambda(tmp_path / "flat" / "50m" / "multi_event.parquet")
    path = tmp_path / "flat" / "50m" / "multi_event.parquet"
    assert layout_of(path) == "yambda"
    listens = freshsid.load_dataset(logs=path)
    assert listens.n_events == int(((raw["kind"] == "listen") & (raw["ratio"] > 50)).sum())
    assert np.all(np.diff(listens.ts) >= 0)  # the file is sorted by user; the logs by time
    organic = freshsid.load_dataset(logs=path, where="event_type = 'listen' AND is_organic = 1 AND played_ratio_pct >= 80")
    expected = (raw["kind"] == "listen") & (raw["organic"] == 1) & (raw["ratio"] >= 80)
    assert organic.n_events == int(expected.sum())
    assert sorted(organic.ts.tolist()) == sorted(raw["ts"][expected].astype(np.int64).tolist())
    assert set(organic.user_ids.tolist()) == set(raw["uid"][expected].tolist())
    likes = freshsid.load_dataset(logs=path, where="event_type = 'like'")
    assert likes.n_events == int((raw["kind"] == "like").sum())


def test_vk_lsvd_shards_in_week_order_with_row_position_as_time(tmp_path):
    written, _ = write_vk(tmp_path / "VK-LSVD")
    assert layout_of(tmp_path / "VK-LSVD") == "vk-lsvd"
    logs = freshsid.load_dataset(logs=tmp_path / "VK-LSVD")
    users = np.concatenate([w["user_id"] for w in written])
    items = np.concatenate([w["item_id"] for w in written])
    assert logs.n_events == len(users)
    assert logs.ts.tolist() == list(range(len(users)))
    assert logs.user_ids[logs.user].tolist() == users.tolist()  # (week, row) order kept
    assert logs.item_ids[logs.item].tolist() == items.tolist()
    engaged = freshsid.load_dataset(logs=tmp_path / "VK-LSVD", where='timespent >= 10 OR "like"')
    keep = np.concatenate([(w["timespent"] >= 10) | w["like"] for w in written])
    assert engaged.n_events == int(keep.sum())
    assert engaged.ts.tolist() == np.flatnonzero(keep).tolist()  # positions counted before the filter


def test_vk_lsvd_item_embeddings_follow_the_dense_items(tmp_path):
    _, vectors = write_vk(tmp_path / "vk", rows=60)
    logs = freshsid.load_dataset(logs=tmp_path / "vk", where="timespent >= 30")
    rows, covered = vk_item_embeddings(tmp_path / "vk", logs)
    assert rows.shape == (logs.n_items, 8) and covered.tolist() == list(range(logs.n_items))
    np.testing.assert_array_equal(rows, vectors[logs.item_ids.astype(np.int64)])


def test_one_shard_is_read_as_vk_lsvd_too(tmp_path):
    written, _ = write_vk(tmp_path / "vk", weeks=((3, "train"),))
    logs = freshsid.load_dataset(logs=tmp_path / "vk" / "interactions" / "train" / "week_03.parquet")
    assert logs.n_events == len(written[0]["user_id"])


def test_the_cli_reads_both_layouts_with_where(tmp_path):
    raw = write_yambda(tmp_path / "multi_event.parquet")
    result = runner.invoke(app, ["data", "stats", "--logs", str(tmp_path / "multi_event.parquet"),
                                 "--where", "is_organic = 0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events"] == int((raw["organic"] == 0).sum())
    write_vk(tmp_path / "vk")
    result = runner.invoke(app, ["data", "stats", "--logs", str(tmp_path / "vk"), "--where", "timespent > 5", "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, words", [
    (["--where", "played_ratio_pct >>= 5"], ["--where", "SQL condition"]),
    (["--where", "no_such_column = 1"], ["Cannot read", "--where"]),
    (["--where", "played_ratio_pct > 1000"], ["0 event", "loosen"]),
    (["--columns", "a,b,c"], ["yambda layout", "drop"]),
])
def test_bad_where_or_options_exit_2_with_one_line(tmp_path, args, words):
    write_yambda(tmp_path / "multi_event.parquet")
    result = runner.invoke(app, ["data", "stats", "--logs", str(tmp_path / "multi_event.parquet"), *args])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    assert all(w in message for w in words), message


def test_where_needs_a_large_layout(tmp_path):
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\na,x,1\nb,y,2\n")
    with pytest.raises(FreshsidError, match="--where applies"):
        freshsid.load_dataset(logs=tmp_path / "log.csv", where="user_id = 'a'")
    with pytest.raises(FreshsidError, match="add --logs"):
        freshsid.load_dataset("synthetic", where="true")


def test_two_copies_of_a_week_are_refused(tmp_path):
    write_vk(tmp_path / "full" / "a", weeks=((0, "train"),))
    write_vk(tmp_path / "full" / "b", weeks=((0, "train"),))  # e.g. two subsamples side by side
    with pytest.raises(FreshsidError, match="both week 0"):
        freshsid.load_dataset(logs=tmp_path / "full")
