"""Malformed input, through the real CLI: exit code 2, one line naming the file and the
problem, no traceback, nothing written."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import snapshot
from freshsid.cli import app

HEADER = "user_id,item_id,timestamp\n"
GOOD = "u1,a,100\nu2,b,200\n"


def text(name: str, content: str | bytes):
    """A case whose input is one file, passed with --logs."""

    def make(folder: Path) -> list[str]:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["--logs", str(path)]

    return make


def parquet(name: str, frame: pl.DataFrame):
    def make(folder: Path) -> list[str]:
        frame.write_parquet(folder / name)
        return ["--logs", str(folder / name)]

    return make


def args(*values: str):
    def make(folder: Path) -> list[str]:
        return [v.replace("{tmp}", str(folder)) for v in values]

    return make


def with_items(items_content: str):
    def make(folder: Path) -> list[str]:
        (folder / "logs.csv").write_text(HEADER + GOOD)
        (folder / "items.csv").write_text(items_content)
        return ["--logs", str(folder / "logs.csv"), "--items", str(folder / "items.csv")]

    return make


def a_folder(folder: Path) -> list[str]:
    (folder / "sub").mkdir()
    return ["--logs", str(folder / "sub")]


def truncated_gzip(folder: Path) -> list[str]:
    blob = gzip.compress((HEADER + GOOD * 200).encode())
    (folder / "logs.csv.gz").write_bytes(blob[: len(blob) // 2])
    return ["--logs", str(folder / "logs.csv.gz")]


# (id, setup -> CLI args after `data stats`, file name expected in the message, phrases expected)
CASES = [
    ("missing-file", args("--logs", "{tmp}/nope.csv"), "nope.csv", ["does not exist"]),
    ("a-directory", a_folder, "sub", ["is a folder"]),
    ("empty-file", text("logs.csv", ""), "logs.csv", ["is empty"]),
    ("header-only", text("logs.csv", HEADER), "logs.csv", ["no events"]),
    ("missing-column", text("logs.csv", "user,item_id,timestamp\n" + GOOD), "logs.csv", ["no column 'user_id'", "--columns"]),
    ("no-header-line", text("logs.csv", "1,2,100\n3,4,200\n"), "logs.csv", ["no column", "header line"]),
    ("non-numeric-time", text("logs.csv", HEADER + GOOD + "u3,c,yesterday\n"), "logs.csv", ["line 4", "not a number"]),
    ("non-finite-time", text("logs.csv", HEADER + "u1,a,inf\n" + GOOD), "logs.csv", ["line 2", "non-finite"]),
    ("fractional-time", text("logs.csv", HEADER + GOOD + "u3,c,300.5\n"), "logs.csv", ["line 4", "fractional", "round"]),
    ("negative-time", text("logs.csv", HEADER + GOOD + "u3,c,-5\n"), "logs.csv", ["line 4", "negative"]),
    ("milliseconds", text("logs.csv", HEADER + "u1,a,1318896000000\n" + GOOD), "logs.csv", ["line 2", "milliseconds"]),
    ("empty-user", text("logs.csv", HEADER + GOOD + ",c,300\n"), "logs.csv", ["line 4", "empty user id"]),
    ("blank-item", text("logs.tsv", "user_id\titem_id\ttimestamp\nu1\t \t5\nu2\tb\t6\n"), "logs.tsv", ["line 2", "empty item id"]),
    ("duplicates", text("logs.csv", HEADER + GOOD + "u1,a,100\n"), "logs.csv", ["1 exact duplicate", "line 4", "--drop-duplicates"]),
    ("ragged-long", text("logs.csv", HEADER + GOOD + "u3,c,300,extra\n"), "logs.csv", ["line 4 has 4 fields", "header has 3"]),
    ("ragged-short", text("logs.csv", HEADER + "u1,a\n" + GOOD), "logs.csv", ["line 2 has 2 fields", "header has 3"]),
    ("gz-not-gzip", text("logs.csv.gz", HEADER + GOOD), "logs.csv.gz", ["not gzip"]),
    ("truncated-gzip", truncated_gzip, "logs.csv.gz", ["truncated gzip"]),
    ("zstd-data", text("logs.csv", b"\x28\xb5\x2f\xfd" + b"\0" * 20), "logs.csv", ["zstd-compressed"]),
    ("not-utf8", text("logs.csv", HEADER.encode() + b"\xff\xfe,a,1\nu2,b,2\n"), "logs.csv", ["UTF-8"]),
    ("unsupported-extension", text("logs.xlsx", HEADER + GOOD), "logs.xlsx", ["unsupported extension '.xlsx'"]),
    ("one-event", text("logs.csv", HEADER + "u1,a,100\n"), "logs.csv", ["at least 2"]),
    ("corrupt-parquet", text("logs.parquet", b"PAR1" + b"\0" * 40), "logs.parquet", ["not a readable parquet"]),
    ("parquet-in-name-only", text("logs.parquet", HEADER + GOOD), "logs.parquet", ["not a parquet file"]),
    (
        "parquet-null-user",
        parquet("logs.parquet", pl.DataFrame({"user_id": [1, None], "item_id": [1, 2], "timestamp": [1, 2]})),
        "logs.parquet",
        ["row 2", "empty user id"],
    ),
    (
        "parquet-bool-time",
        parquet("logs.parquet", pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [True, False]})),
        "logs.parquet",
        ["timestamp column has type Boolean"],
    ),
    ("items-without-key", with_items("title,brand\nX,Y\n"), "items.csv", ["no 'item_id' or 'asin' column"]),
    ("unknown-dataset", args("amazon-books"), "amazon-books", ["Unknown dataset", "amazon-beauty"]),
    ("missing-data-dir", args("amazon-beauty", "--data-dir", "{tmp}/nodata"), "nodata", ["--data-dir", "FRESHSID_DATA"]),
    ("dataset-and-logs", args("amazon-beauty", "--logs", "{tmp}/x.csv"), "amazon-beauty", ["pass one of them"]),
    ("bad-columns-option", args("--logs", "{tmp}/x.csv", "--columns", "a,b"), "--columns", ["three columns"]),
    ("repeated-column-name", text("logs.csv", "user_id,item_id,timestamp,item_id\n" + GOOD.replace("\n", ",x\n")),
     "logs.csv", ["repeats column names", "'item_id' in columns 2, 4"]),
    ("nul-in-a-user-id", text("logs.csv", HEADER + GOOD + "u\x003,c,300\n"), "logs.csv", ["line 4", "control character"]),
    ("escape-in-an-item-id", text("logs.csv", HEADER + "u1,a\x1b[31m,100\n" + GOOD), "logs.csv", ["line 2", "item id"]),
]


@pytest.mark.parametrize(("setup", "named", "phrases"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_exits_2_with_one_line(tmp_path, monkeypatch, setup, named, phrases):
    work = tmp_path / "work"
    work.mkdir()
    cli_args = ["data", "stats", *setup(work)]
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, cli_args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output and result.stdout == ""
    assert named in message
    for phrase in phrases:
        assert phrase in message, message
    assert snapshot(tmp_path) == before  # nothing written


def test_there_are_at_least_15_distinct_malformations():
    assert len({c[0] for c in CASES}) >= 15


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permission bits")
def test_unreadable_file(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_text(HEADER + GOOD)
    path.chmod(0)
    result = CliRunner().invoke(app, ["data", "stats", "--logs", str(path)])
    assert result.exit_code == 2 and "permission denied" in result.stderr


def test_usage_error_exits_2():
    result = CliRunner().invoke(app, ["data", "stats", "--no-such-option"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_real_process_exits_2_without_traceback(tmp_path):
    """The installed entry point path: a separate interpreter, real exit code and stderr."""
    path = tmp_path / "logs.csv"
    path.write_text(HEADER + GOOD + "u3,c,soon\n")
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "freshsid.cli", "data", "stats", "--logs", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "line 4" in proc.stderr and "logs.csv" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.csv"]
