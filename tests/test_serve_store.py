"""The releases store under a second actor and damaged state: an operator beside a refresh,
a hand-edited pointer, damaged or deleted releases, ids past r9999, a killed refresh.
Tiny releases (conftest's ``tiny``: r0001, then r0002 promoted), seconds in all."""

import json
import os
import shutil
import signal
import tempfile
import time

import pytest

from freshsid.cli import app
from freshsid.errors import FreshsidError
from freshsid.serve import ops
from freshsid.serve.release import Releases

from clirun import invoke, runner


def refused(*args):
    """Run ``freshsid ARGS``, insist on exit 2 with one line on stderr; returns that line."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize("damage", ["corrupt", "deleted"])
def test_rollback_onto_a_corrupt_or_deleted_release_is_refused(tiny, damage):
    target = tiny.releases.path("r0001")
    if damage == "corrupt":
        (target / "catalog.parquet").write_bytes(b"PAR1 broken")
    else:
        shutil.rmtree(target)
    before = (tiny.releases.root / "CURRENT.json").read_bytes()
    message = refused("release", "rollback", tiny.releases.root)
    assert ("does not match its manifest hash" if damage == "corrupt" else "has no release r0001") in message
    assert (tiny.releases.root / "CURRENT.json").read_bytes() == before  # r0002 stays current


def test_status_checks_the_current_release_files_and_lists_go_on_past_a_damaged_release(tiny):
    root = tiny.releases.root
    assert json.loads(invoke("status", root, "--json").stdout)["current_files"] == "ok"
    (tiny.releases.path("r0002") / "histories.parquet").write_bytes(b"PAR1 broken")
    report = json.loads(invoke("status", root, "--json").stdout)
    assert report["current"] == "r0002" and report["current_files"].startswith("damaged:")
    manifest = tiny.releases.path("r0001") / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])  # a truncated old manifest
    listed = json.loads(invoke("release", "list", root, "--json").stdout)
    assert [r["id"] for r in listed["releases"]] == ["r0001", "r0002"]
    assert "not a valid manifest" in listed["releases"][0]["damaged"] and listed["releases"][1]["current"]
    assert "r0001" in invoke("release", "list", root).stdout
    report = json.loads(invoke("status", root, "--json").stdout)
    assert list(report["damaged"]) == ["r0001"] and report["lineage"] == ["r0002"]


def test_a_pointer_that_is_not_one_is_one_sentence_for_every_command(tiny):
    root = tiny.releases.root
    for text in ('{"current": 5, "previous": []}', '{"current": "r0002"}', '{"current": "../x", "previous": []}', "["):
        (root / "CURRENT.json").write_text(text)
        for command in (("status", root), ("release", "prune", root), ("release", "rollback", root),
                        ("release", "list", root)):
            assert "is not a release pointer" in refused(*command)


def test_ids_past_r9999_are_ordered_by_number_and_never_written_over(tiny, monkeypatch):
    releases = tiny.releases
    for old, new in (("r0001", "r9999"), ("r0002", "r10000")):
        releases.path(old).rename(releases.path(new))
    (releases.root / "CURRENT.json").write_text(json.dumps({"current": "r10000", "previous": ["r9999"]}))
    before = (releases.path("r10000") / "manifest.json").read_bytes()
    assert releases.ids() == ["r9999", "r10000"]
    assert tiny.create() == "r10001"  # r10000 as strings sort: r10000 was rewritten in place, its own parent
    assert (releases.path("r10000") / "manifest.json").read_bytes() == before
    assert releases.load_current().manifest.info["parent_release"] == "r10000"
    # exclusive create: even told of no release past r0001, create writes over none
    monkeypatch.setattr(Releases, "ids", lambda self: ["r9999"])
    with pytest.raises(FileExistsError):
        tiny.create(promote=False)
    assert (releases.path("r10000") / "manifest.json").read_bytes() == before


def test_promoting_the_current_release_again_keeps_the_rollback(tiny):
    tiny.releases.promote("r0002")
    assert tiny.releases.pointer() == {"current": "r0002", "previous": ["r0001"]}
    assert tiny.releases.rollback() == "r0001"


def test_a_killed_refresh_reads_interrupted_and_its_scratch_is_cleaned(tiny, monkeypatch, caplog):
    """A refresh killed with SIGKILL while it fine-tunes leaves "running" and its scratch;
    status and the exporter read "interrupted" (no one holds the lock), prune removes the
    scratch, and the next refresh records the interruption and removes what is left."""
    import freshsid.serve.refresh as refresh_module

    releases = tiny.releases
    work = releases.root / ops.WORK

    def stuck(*args, **kwargs):  # the refresh's scratch made, then killed mid fine-tune
        work.mkdir(exist_ok=True)
        tempfile.mkdtemp(dir=work, prefix="refresh-")
        time.sleep(60)

    monkeypatch.setattr(refresh_module, "_refresh", stuck)
    pid = os.fork()
    if pid == 0:  # the refresh process
        try:
            refresh_module.refresh(releases, None, None)
        finally:
            os._exit(1)
    try:
        deadline = time.monotonic() + 30
        while not list(work.glob("refresh-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(invoke("status", releases.root, "--json").stdout)["last_refresh"]["outcome"] == "running"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert json.loads(invoke("status", releases.root, "--json").stdout)["last_refresh"]["outcome"] == "interrupted"
    assert 'freshsid_last_refresh_outcome{outcome="interrupted"} 1.0' in _exported(releases)
    assert list(work.glob("refresh-*")) and invoke("release", "prune", releases.root).stdout
    assert not list(work.glob("refresh-*"))  # prune removed the killed refresh's scratch

    tempfile.mkdtemp(dir=work, prefix="refresh-")  # (as if prune had not run)
    monkeypatch.setattr(refresh_module, "_refresh", lambda *a, **k: refresh_module.NotDue("r0002", 0.0, 1.0, 0))
    caplog.set_level("INFO", logger="freshsid.events")
    caplog.clear()
    refresh_module.refresh(releases, None, None)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "freshsid.events"]
    assert [(e["outcome"], len(e.get("scratch_removed", []))) for e in lines] == [("interrupted", 1), ("not_due", 0)]
    assert not list(work.glob("refresh-*")) and ops.last_refresh(releases)["outcome"] == "not_due"


def test_a_refresh_that_raises_is_never_left_running(tiny, monkeypatch):
    import freshsid.serve.refresh as refresh_module

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(refresh_module, "_refresh", bug)
    with pytest.raises(RuntimeError):
        refresh_module.refresh(tiny.releases, None, None)
    assert ops.last_refresh(tiny.releases)["outcome"] == "failed"
    with pytest.raises(FreshsidError, match="not a release pointer"):
        (tiny.releases.root / "CURRENT.json").write_text('{"current": 5, "previous": []}')
        tiny.releases.promote("r0001")


def _exported(releases):
    from freshsid.serve.metrics import ServiceMetrics

    return ServiceMetrics(releases.root).text().decode()
