"""The CLI surface: every command documents itself with an example; `data stats` output."""

import json

import pytest
import typer
from typer.testing import CliRunner

from freshsid import __version__
from freshsid.cli import app
from freshsid.data.registry import data_root

runner = CliRunner()


def command_paths(command=None, path=()):
    """Every registered command and group, found by walking the app (new ones included)."""
    command = command or typer.main.get_command(app)
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from command_paths(sub, (*path, name))


EXPECTED = {
    ("data", "stats"), ("embed", "collab"), ("embed", "content"), ("sids", "build"), ("sids", "inspect"),
    ("sids", "align"), ("retriever", "train"), ("retriever", "finetune"), ("retriever", "eval"),
    ("retriever", "recommend"), ("staleness",), ("experiment",), ("demo",), ("report",),
    ("release", "create"), ("release", "list"), ("release", "promote"), ("release", "rollback"), ("refresh",),
    ("recommend-batch",), ("serve",), ("rolling",),
}
DATA_OPTIONS = {"dataset", "data_dir", "logs", "items", "columns", "sep", "drop_duplicates", "where"}


def test_the_walk_finds_every_command_and_sub_app():
    paths = set(command_paths())
    assert EXPECTED <= paths
    assert {(), ("data",), ("embed",), ("sids",), ("retriever",), ("release",)} <= paths


def test_data_reading_commands_share_the_same_dataset_options():
    root = typer.main.get_command(app)
    readers = set()
    for path in EXPECTED:
        command = root
        for name in path:
            command = command.commands[name]
        names = {p.name for p in command.params}
        if names & DATA_OPTIONS:
            assert DATA_OPTIONS <= names, path
            readers.add(path)
    assert readers == EXPECTED - {("sids", "align"), ("demo",), ("report",), ("release", "list"), ("release", "promote"),
                                  ("release", "rollback"), ("recommend-batch",),
                                  ("serve",)}


@pytest.mark.parametrize("path", list(command_paths()), ids=lambda p: " ".join(p) or "freshsid")
def test_every_command_has_help_with_an_example(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    assert "freshsid" in result.stdout.split("Example", 1)[1]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == __version__


@pytest.mark.skipif(
    not (data_root() / "amazon2014" / "beauty").is_dir(), reason=f"benchmark data not found under {data_root()}"
)
def test_data_stats_beauty_json():
    result = runner.invoke(app, ["data", "stats", "amazon-beauty", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["events"]) == (22_363, 12_101, 198_502)
    assert stats["first_event"].startswith("2002-06") and stats["last_event"].startswith("2014-07")
    assert stats["n_parts"] == 10 and stats["test_window"] == "9:10"
    sizes = [p["events"] for p in stats["parts"]]
    # whole days (the timestamps are day-granular): no day in two parts, sizes within a few days' events
    assert sum(sizes) == 198_502 and max(sizes) - min(sizes) < 0.03 * 198_502 / 10
    assert all(a["end"] < b["start"] for a, b in zip(stats["parts"], stats["parts"][1:]))
    new_items = [p["new_items"] for p in stats["parts"]]
    assert sum(new_items) == 12_101 and new_items[8] > 100  # "a few hundred items appear first in part 8"
    test = stats["test"]
    assert set(test) >= {"test_users", "excluded_users", "labels", "labels_on_unseen_items", "unseen_label_share"}
    assert 0.10 < test["unseen_label_share"] < 0.25  # the README's "roughly 16%"


def test_data_stats_table_and_json_on_a_small_log(tmp_path):
    rows = "".join(f"u{i % 7},i{i % 11},{1_600_000_000 + 86_400 * i}\n" for i in range(40))
    path = tmp_path / "small.csv"
    path.write_text("uid,sku,ts\n" + rows)
    base = ["data", "stats", "--logs", str(path), "--columns", "uid,sku,ts", "--n-parts", "4"]
    table = runner.invoke(app, base)
    assert table.exit_code == 0, table.output
    assert "7 users, 11 items, 40 events" in table.stdout and "2020-09-13" in table.stdout
    stats = json.loads(runner.invoke(app, [*base, "--json"]).stdout)
    assert [p["events"] for p in stats["parts"]] == [10, 10, 10, 10]
    assert [p["new_items"] for p in stats["parts"]] == [10, 1, 0, 0]
    assert stats["test_window"] == "3:4" and stats["test"]["labels_on_unseen_items"] == 0


def test_progress_spinner_goes_to_stderr_only(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("user_id,item_id,timestamp\na,x,1\nb,y,2\nc,x,3\n")
    result = runner.invoke(app, ["--progress", "data", "stats", "--logs", str(path), "--n-parts", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events"] == 3


@pytest.mark.parametrize("args, says", [
    (["--n-parts", "6", "--initial", "5"], "must leave at least one round"),
    (["--strategies", "Frozen,Sometimes"], "unknown strategies"),
    (["--signal", "vibes"], "should be 'churn', 'unseen' or 'decay'"),
])
def test_rolling_refuses_a_protocol_without_rounds_or_an_unknown_name(tmp_path, args, says):
    result = runner.invoke(app, ["rolling", "--dataset", "synthetic", "--preset", "tiny", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "run" / "results.json").exists()


def test_rolling_passes_threads_and_the_protocol_to_the_runner(tmp_path, monkeypatch):
    from freshsid.evaluate.rolling import Rolling

    seen = {}

    def fake_run(self):
        seen["config"] = self.config
        raise SystemExit(0)

    monkeypatch.setattr(Rolling, "run", fake_run)
    result = runner.invoke(app, ["rolling", "--dataset", "synthetic", "--preset", "tiny", "--threads", "1",
                                 "--strategies", "Incremental,Aligned", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.run.threads == 1 and config.run.preset == "tiny" and config.strategies == ("Incremental", "Aligned")
