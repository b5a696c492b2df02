"""`freshsid refresh`, the production step, twice in a row on a growing synthetic log:
three releases in a chain, each aligned to its parent; rollback restores the previous one.
A release that carries its SID build refreshes with a warm recipe, and incrementally (its
SIDs frozen, new items coded by its tokenizer), refresh after refresh."""

import contextlib
import dataclasses
import json
import os
import shutil
import time

import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from freshsid.artifacts import read_manifest
from freshsid.cli import app
from freshsid.config import SidConfig
from freshsid.data.synthetic import SyntheticConfig, write_synthetic
from freshsid.serve.release import Releases, load_release
from freshsid.sid.build import make_tokenizer
from freshsid.sid.table import SidTable

from clirun import invoke, runner

SYNTHETIC = SyntheticConfig(n_users=400, n_items=150, n_events=9000, n_communities=5)
SIDS = ["--tokenizer", "rqkmeans", "--levels", "2", "--codebook-size", "8", "--suffix-size", "64", "--preset", "tiny"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The log cut at 70%, 85% and 100% (``opts(share)``: the data options of a cut), and on
    the first 70%: SASRec embeddings (16 wide, where the tiny preset's are 32), the SID
    table coded from them and a checkpoint trained on it."""
    d = tmp_path_factory.mktemp("refresh")
    files = write_synthetic(SYNTHETIC, d / "logs")
    events = pl.read_parquet(files.interactions).sort("timestamp", maintain_order=True)
    logs = {}
    for share in (70, 85, 100):
        logs[share] = d / f"logs-{share}.parquet"
        events.head(len(events) * share // 100).write_parquet(logs[share])
    opts = lambda share: ["--logs", logs[share], "--items", files.items, "--drop-duplicates"]  # noqa: E731
    invoke("embed", "collab", *opts(70), "--parts", "0:10", "--dim", "16", "--epochs", "2", "--preset", "tiny",
           "--out", d / "emb")
    invoke("sids", "build", *opts(70), "--embeddings", d / "emb", "--parts", "0:10", *SIDS, "--out", d / "sids")
    invoke("retriever", "train", *opts(70), "--sids", d / "sids", "--parts", "0:10", "--preset", "tiny", "--epochs", "1",
           "--out", d / "base")
    return d, opts, events


@pytest.fixture(scope="module")
def chain(built):
    """r0001 built on the first 70% of the log (no SID build carried), then two refreshes on 85% and 100%."""
    d, opts, events = built
    root = d / "releases"
    invoke("release", "create", *opts(70), "--checkpoint", d / "base", "--sids", d / "sids", "--out", root, "--promote")
    outputs = [invoke("refresh", *opts(share), "--releases", root, "--preset", "tiny", "--metric", "recall@20",
                      "--tolerance", "1.0", "--promote") for share in (85, 100)]
    return root, outputs, events


def test_two_refreshes_make_a_chain_of_aligned_releases(chain):
    root, outputs, events = chain
    releases = Releases(root)
    assert releases.ids() == ["r0001", "r0002", "r0003"] and releases.current == "r0003"
    bundles = [load_release(releases.path(i)) for i in releases.ids()]
    for parent, child in zip(bundles, bundles[1:]):
        assert child.manifest.info["parent_release"] == parent.id
        assert child.table.meta["parent"] == parent.table.content_hash  # aligned to the release it replaces
        assert child.table.codebook_sizes == parent.table.codebook_sizes
        assert child.manifest.info["data"]["until_event"] > parent.manifest.info["data"]["until_event"]
        assert set(parent.catalog["item_id"].to_list()) <= set(child.catalog["item_id"].to_list())
    assert bundles[-1].manifest.info["data"]["until_event"] == len(events.unique(maintain_order=True))
    # the fine-tune's manifest says what it trained on: targets in the events since the parent
    retriever = read_manifest(releases.path("r0002") / "retriever")
    assert (retriever.info["mode"], retriever.info["target_window"]) == ("finetune", "1:2")
    for output in outputs:
        assert "promoted" in output.stdout and "codes kept per level after alignment" in output.stdout
        assert "recall@20: current" in output.stdout
        assert " taken, 0 refused (late" in output.stdout  # the growing log has no late events
    metrics = bundles[1].manifest.info["metrics"]
    assert set(metrics) == {"current recall@20", "candidate recall@20"} and all(0 <= v <= 1 for v in metrics.values())


def test_rollback_restores_the_previous_release(chain):
    root, _, _ = chain
    assert invoke("release", "rollback", root).stdout.strip() == "current: r0002"
    assert Releases(root).load_current().id == "r0002"
    invoke("release", "promote", root, "r0003")


def test_refresh_without_new_events_is_refused(chain, tmp_path):
    root, _, events = chain
    path = tmp_path / "same.parquet"
    events.write_parquet(path)
    result = runner.invoke(app, ["refresh", "--logs", str(path), "--drop-duplicates", "--releases", str(root),
                                 "--preset", "tiny"])
    assert result.exit_code == 2 and "no events after" in result.stderr
    listed = json.loads(invoke("release", "list", root, "--json").stdout)
    assert [r["id"] for r in listed["releases"]] == ["r0001", "r0002", "r0003"]


def test_recommend_batch_streams_every_user_and_resumes(chain, tmp_path, monkeypatch):
    """Every user's top k from the current release; a run killed after its first chunk
    resumes from it and gives the same file as an uninterrupted run."""
    import freshsid.serve.batch as batch

    root, _, _ = chain
    whole = tmp_path / "whole.parquet"
    invoke("recommend-batch", "--releases", root, "--k", "5", "--chunk", "64", "--out", whole)
    recs = pl.read_parquet(whole)
    release = Releases(root).load_current()
    assert recs["user_id"].n_unique() == release.histories.height
    assert recs.group_by("user_id").len()["len"].max() == 5 and recs["rank"].min() == 1
    assert set(recs["item_id"].to_list()) <= set(release.catalog["item_id"].to_list())

    real, calls = batch._write_chunk, []

    def dies_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(batch, "_write_chunk", dies_after_one)
    resumed = tmp_path / "resumed.parquet"
    with pytest.raises(KeyboardInterrupt):
        batch.recommend_batch(Releases(root), resumed, users=None, k=5, beam=5, chunk=64, progress=False)
    monkeypatch.setattr(batch, "_write_chunk", real)
    result = batch.recommend_batch(Releases(root), resumed, users=None, k=5, beam=5, chunk=64, progress=False)
    assert result.resumed_chunks == 1 and pl.read_parquet(resumed).equals(recs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed.parquet", "whole.parquet"]


@contextlib.contextmanager
def serving(root, **options):
    from freshsid.serve.config import ServeConfig
    from freshsid.serve.http import Service, serve_in_thread

    service = Service(Releases(root), ServeConfig(poll_seconds=0.2, **options))
    with serve_in_thread(service) as base:
        yield base, service


def test_the_service_swaps_releases_under_load_without_failing_a_request(chain, caplog):
    """2,000 requests at concurrency 32 while the current release is swapped twice: none
    fails, each names the release that answered, and every request sent after a swap is
    answered by the new release. A corrupted release made current mid-run is refused; the
    old one keeps serving."""
    import asyncio

    import httpx

    root, _, _ = chain
    releases = Releases(root)
    releases.promote("r0001")
    users = releases.load_current().histories["user_id"].to_list()
    responses, swaps, refused = [], [], {}
    broken = root / "releases" / "r0009"

    async def load(base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            gate = asyncio.Semaphore(32)

            async def one(i):
                async with gate:
                    sent = time.perf_counter()
                    r = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": 5})
                    responses.append((sent, r.status_code, r.json().get("release"), len(r.json().get("items", []))))

            async def swapper():
                for after, target in ((500, "r0002"), (1200, "r0003")):
                    while len(responses) < after:
                        await asyncio.sleep(0.005)
                    releases.promote(target)
                    assert (await client.post("/admin/reload")).json()["release"] == target
                    swaps.append((time.perf_counter(), target))
                # mid-run, a broken release is made current by hand (promote would refuse it)
                while len(responses) < 1600:
                    await asyncio.sleep(0.005)
                shutil.copytree(root / "releases" / "r0003", broken)
                (broken / "catalog.parquet").write_bytes(b"PAR1 broken")
                (root / "CURRENT.json").write_text(json.dumps({"current": "r0009", "previous": ["r0003"]}))
                refused.update((await client.post("/admin/reload")).json())

            await asyncio.gather(swapper(), *(one(i) for i in range(2000)))

    caplog.set_level("INFO", logger="freshsid.events")
    with serving(root) as (base, service):
        asyncio.run(load(base))
        assert len(responses) == 2000 and {status for _, status, _, _ in responses} == {200}
        assert all(n == 5 for *_, n in responses)
        assert {release for _, _, release, _ in responses} == {"r0001", "r0002", "r0003"}
        for swapped_at, target in swaps:
            assert all(release >= target for sent, _, release, _ in responses if sent > swapped_at)

        # the broken release made current mid-run was refused; r0003 kept serving, to the end
        assert refused["refused"] == "r0009" and refused["release"] == "r0003"
        assert [release for _, _, release, _ in sorted(responses)][-300:] == ["r0003"] * 300
        with httpx.Client(base_url=base, timeout=60) as client:
            after = client.post("/recommend", json={"history": ["1", "2"], "k": 3, "exclude_seen": True})
            assert after.status_code == 200 and after.json()["release"] == "r0003"
            assert client.post("/recommend", json={"user_id": "nobody"}).status_code == 404
            assert client.post("/recommend", json={"user_id": users[0], "k": 1000}).status_code == 422
            assert client.post("/recommend", json={"k": 3}).status_code == 422
            assert client.get("/healthz").json() == {"status": "ok", "release": "r0003"}
            metrics = client.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        answered = {(s.labels["status"], s.labels["release"]): s.value for s in families["freshsid_requests"].samples
                    if s.name == "freshsid_requests_total"}
        assert sum(n for (status, _), n in answered.items() if status == "200") == 2001
        assert {release for _, release in answered} == {"r0001", "r0002", "r0003"}
        reloads = {s.labels["outcome"]: s.value for s in families["freshsid_reloads"].samples if s.name.endswith("_total")}
        assert reloads == {"swapped": 2, "refused": 1, "error": 0}
        assert [s.labels["release"] for s in families["freshsid_release_info"].samples] == ["r0003"]
        batches = {s.name: s.value for s in families["freshsid_batch_size"].samples}
        assert batches["freshsid_batch_size_sum"] > batches["freshsid_batch_size_count"]  # requests were decoded together
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "freshsid.events"]
    swapped = [(e["previous"], e["release"]) for e in events if e["event"] == "swap"]
    assert swapped == [("r0001", "r0002"), ("r0002", "r0003")]  # one line a swap
    assert [e["release"] for e in events if e["event"] == "release_refused"] == ["r0009"]
    shutil.rmtree(broken)
    releases.promote("r0003")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere regardless of permission bits")
def test_recommend_batch_refuses_an_unwritable_out_before_decoding(chain, tmp_path):
    root, _, _ = chain
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    result = runner.invoke(app, ["recommend-batch", "--releases", str(root), "--out", str(locked / "recs.parquet")])
    assert result.exit_code == 2 and "permission denied" in result.stderr
    assert list(locked.iterdir()) == []


def test_recommend_batch_on_two_torchrun_ranks_writes_the_one_process_file(chain, tmp_path):
    import subprocess
    import sys

    root, _, _ = chain
    invoke("recommend-batch", "--releases", root, "--k", "5", "--chunk", "64", "--out", tmp_path / "one.parquet")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "freshsid", "--",
           "recommend-batch", "--releases", str(root), "--k", "5", "--chunk", "64", "--out", str(tmp_path / "two.parquet")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" rows from release ") == 1  # rank 0 reports for both
    assert pl.read_parquet(tmp_path / "two.parquet").equals(pl.read_parquet(tmp_path / "one.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "two.parquet"]


def test_a_concurrent_refresh_is_refused_before_any_work(chain, tmp_path, monkeypatch):
    """The refresh lock is taken first: while another refresh holds it, a second one is
    refused before it reads the release or trains anything."""
    import freshsid.serve.refresh as refresh_module
    from freshsid.artifacts import output_lock

    root, _, events = chain

    def no_work(*args, **kwargs):
        raise AssertionError("the refused refresh did work")

    monkeypatch.setattr(refresh_module, "_recode", no_work)
    monkeypatch.setattr(refresh_module.Releases, "load_current", no_work)
    path = tmp_path / "logs.parquet"
    events.write_parquet(path)
    with output_lock(root / refresh_module.REFRESH_LOCK):
        result = runner.invoke(app, ["refresh", "--logs", str(path), "--drop-duplicates", "--releases", str(root),
                                     "--preset", "tiny"])
    assert result.exit_code == 2 and "Another refresh of" in result.stderr and "is running" in result.stderr
    assert Releases(root).ids() == ["r0001", "r0002", "r0003"]


def test_status_reports_the_current_release_its_lineage_and_the_staleness_now(chain, tmp_path):
    root, _, events = chain
    path = tmp_path / "logs.parquet"
    events.write_parquet(path)
    report = json.loads(invoke("status", root, "--logs", path, "--drop-duplicates", "--json").stdout)
    assert report["current"] == "r0003" and report["lineage"] == ["r0003", "r0002", "r0001"]
    assert report["rollback_to"] == Releases(root).pointer()["previous"][-1] and report["age_seconds"] >= 0
    assert set(report["gate"]) == {"current recall@20", "candidate recall@20"}
    assert report["staleness"]["new_events"] == 0 and report["staleness"]["unseen_share"] == 0.0
    # the refresh refused by the test above left its outcome (a failure), which status shows
    assert report["last_refresh"]["outcome"] == "failed" and "no events after" in report["last_refresh"]["reason"]


def test_refresh_if_due_exit_codes(chain, tmp_path, monkeypatch):
    """Not due (the signal under the threshold): exit 3, nothing trained; due, with a
    candidate the gate refuses: exit 4, written but not promoted; each leaves its outcome."""
    import freshsid.serve.refresh as refresh_module

    root, _, events = chain
    copy = tmp_path / "releases"
    shutil.copytree(root, copy)
    Releases(copy).promote("r0002")  # events arrived since r0002, on items it may not code
    logs = tmp_path / "logs.parquet"
    events.write_parquet(logs)
    args = ["refresh", "--logs", str(logs), "--drop-duplicates", "--releases", str(copy), "--preset", "tiny",
            "--metric", "recall@20", "--promote", "--if-due"]

    def no_training(*a, **k):
        raise AssertionError("a refresh that is not due trained")

    with monkeypatch.context() as m:
        m.setattr(refresh_module, "_recode", no_training)
        result = runner.invoke(app, [*args, "--threshold", "1.0"])
    assert result.exit_code == 3 and "not due" in result.stdout
    assert json.loads((copy / "last-refresh.json").read_text())["outcome"] == "not_due"

    scores = iter([0.5, 0.1])  # the release in service, then the candidate
    monkeypatch.setattr(refresh_module, "_score", lambda *a, **k: next(scores))
    result = runner.invoke(app, [*args, "--threshold", "0.0"])
    assert result.exit_code == 4 and "fails the gate" in result.stdout, result.output
    assert Releases(copy).current == "r0002" and "r0004" in Releases(copy).ids()
    last = json.loads((copy / "last-refresh.json").read_text())
    assert (last["outcome"], last["release"], last["promoted"]) == ("refused_by_gate", "r0004", False)


def test_a_rollback_while_a_refresh_trains_supersedes_it_and_a_shuffled_export_changes_nothing(chain, tmp_path,
                                                                                              monkeypatch):
    """Two operators' stories on one refresh. It trains from r0002; meanwhile an operator
    rolls back (to r0003, promoted before r0002 here): the candidate, passing the gate, is
    not promoted over the rollback but ends "superseded" (exit 5), its parent r0002. Its
    logs are r0003's events exported in another row order (a warehouse export without
    ORDER BY; many events share a second): no event is refused, and every user and item
    keeps the index, hence the user token, that r0003 gave it from the ordered export."""
    import freshsid.serve.refresh as refresh_module

    root, _, events = chain
    copy = tmp_path / "releases"
    shutil.copytree(root, copy)
    releases = Releases(copy)
    releases.promote("r0002")
    shuffled = tmp_path / "shuffled.parquet"
    events.sample(fraction=1.0, shuffle=True, seed=0).write_parquet(shuffled)

    def scored_while_an_operator_rolls_back(*args, **kwargs):
        if releases.current == "r0002":
            assert invoke("release", "rollback", copy).stdout.strip() == "current: r0003"
        return 0.5

    monkeypatch.setattr(refresh_module, "_score", scored_while_an_operator_rolls_back)
    result = runner.invoke(app, ["refresh", "--logs", str(shuffled), "--drop-duplicates", "--releases", str(copy),
                                 *REFRESH, "--promote"])
    assert result.exit_code == 5 and "superseded by r0003" in result.stdout, result.output
    assert releases.current == "r0003" and releases.ids()[-1] == "r0004"
    candidate, served = (load_release(releases.path(i)) for i in ("r0004", "r0003"))
    assert candidate.manifest.info["parent_release"] == "r0002"  # the release its checkpoint came from
    last = json.loads((copy / "last-refresh.json").read_text())
    assert (last["outcome"], last["promoted"], last["superseded_by"], last["late_events"]) == ("superseded", False,
                                                                                                "r0003", 0)
    assert candidate.histories.select("user", "user_id").equals(served.histories.select("user", "user_id"))
    assert candidate.catalog.select("item", "item_id").equals(served.catalog.select("item", "item_id"))


def test_prune_keeps_the_current_release_its_parent_and_the_rollback(chain, tmp_path):
    root, _, _ = chain
    copy = tmp_path / "releases"
    shutil.copytree(root, copy)
    (copy / "CURRENT.json").unlink()
    for release_id in ("r0001", "r0002", "r0003"):
        Releases(copy).promote(release_id)
    assert invoke("release", "prune", copy, "--keep", "1").stdout.strip() == "removed r0001"
    assert Releases(copy).ids() == ["r0002", "r0003"] and Releases(copy).pointer()["previous"][-1] == "r0002"
    assert invoke("release", "prune", copy, "--keep", "1").stdout.strip() == "nothing to remove"
    assert invoke("release", "rollback", copy).stdout.strip() == "current: r0002"
    assert Releases(copy).load_current().id == "r0002"


REFRESH = ["--preset", "tiny", "--metric", "recall@20", "--tolerance", "1.0"]


@pytest.fixture(scope="module")
def frozen(built):
    """r0001 created with --embeddings (it carries its SID build), then two incremental
    refreshes on 85% and 100% of the log."""
    d, opts, _ = built
    root = d / "frozen"
    invoke("release", "create", *opts(70), "--checkpoint", d / "base", "--sids", d / "sids", "--embeddings", d / "emb",
           "--out", root, "--promote")
    outputs = [invoke("refresh", *opts(share), "--releases", root, "--mode", "incremental", *REFRESH, "--promote")
               for share in (85, 100)]
    return root, outputs


def test_incremental_refreshes_keep_every_sid_and_code_the_items_first_seen_since(frozen):
    root, outputs = frozen
    releases = Releases(root)
    assert releases.ids() == ["r0001", "r0002", "r0003"] and releases.current == "r0003"
    bundles = [load_release(releases.path(i), build=True) for i in releases.ids()]
    first_time = bundles[0].manifest.info["data"]["until_time"]
    for parent, child in zip(bundles, bundles[1:]):
        assert child.manifest.info["refresh"] == {"mode": "incremental", "recipe": "cold-remap"}
        np.testing.assert_array_equal(child.table.codes_for(parent.table.items), parent.table.codes)  # no SID moved
        added = child.catalog.filter(~pl.col("item").is_in(parent.table.items.tolist()))
        assert added.height and added["first_seen"].min() >= first_time  # items first seen since the first release
        assert child.table.meta["stats"]["incremental"]["coded_by"] == parent.table.content_hash
    for release in bundles:  # each carries the build its table is, tokenizer state included: the next one continues it
        assert release.build.table.content_hash == release.table.content_hash
        assert release.build.table.tokenizer_state is not None and release.build.embeddings.state is not None
        assert release.build.embeddings.config["dim"] == 16  # the build's SASRec continued, not the preset's
    for output in outputs:
        assert "promoted (incremental refresh)" in output.stdout
        assert "codes kept per level: L1 100.0%  L2 100.0%" in output.stdout
    listed = json.loads(invoke("release", "list", root, "--json").stdout)
    assert [r["refresh"] for r in listed["releases"]] == [None] + [{"mode": "incremental", "recipe": "cold-remap"}] * 2
    report = json.loads(invoke("status", root, "--json").stdout)
    assert report["refresh"] == {"mode": "incremental", "recipe": "cold-remap"} and report["carries_build"]


def test_a_warm_recipe_continues_the_build_the_release_carries(built, frozen, tmp_path):
    """The first release, created with --embeddings, refreshed by the stable recipe: the
    candidate is aligned to it and carries the refreshed (unaligned) build, whose SASRec and
    tokenizer continued the release's. Its SIDs relabelled, it keeps the refreshed tokenizer
    relabelled alike, so an incremental refresh after it keeps every SID it serves."""
    d, opts, _ = built
    copy = tmp_path / "releases"
    shutil.copytree(frozen[0], copy)
    releases = Releases(copy)
    releases.promote("r0001")
    output = invoke("refresh", *opts(85), "--releases", copy, "--recipe", "stable", *REFRESH, "--promote")
    assert "promoted (aligned refresh)" in output.stdout and "codes kept per level after alignment" in output.stdout
    first, candidate = load_release(releases.path("r0001"), build=True), releases.load_current(build=True)
    assert candidate.id == "r0004" and candidate.manifest.info["refresh"] == {"mode": "aligned", "recipe": "stable"}
    assert candidate.table.meta["parent"] == first.table.content_hash  # aligned to the release it replaces
    build = candidate.build
    assert build.table.content_hash != candidate.table.content_hash and build.table.tokenizer_state is not None
    assert build.embeddings.config["dim"] == 16 and build.embeddings.config["valid_users"] == 0  # the recipe's schedule
    assert build.table.meta["tokenizer"]["init_codebooks"] is not None  # the tokenizer continued the release's
    assert candidate.table.tokenizer_state is not None
    invoke("refresh", *opts(100), "--releases", copy, "--mode", "incremental", *REFRESH, "--promote")
    after = releases.load_current(build=True)
    assert after.id == "r0005" and after.manifest.info["refresh"] == {"mode": "incremental", "recipe": "cold-remap"}
    assert np.array_equal(after.table.codes_for(candidate.table.items), candidate.table.codes)
    assert after.table.meta["stats"]["incremental"]["coded_by"] == candidate.table.content_hash
    # the new items' prefixes are what the refreshed tokenizer gives them, relabelled as alignment did
    new = np.setdiff1d(after.table.items, candidate.table.items)
    assert len(new) > 0
    coded = after.table.codes_for(new)[:, :-1]
    vectors = after.build.embeddings.vectors[new].astype(np.float32)
    levels = len(build.table.codebook_sizes) - 1
    plain = make_tokenizer(SidConfig(tokenizer=build.table.meta["tokenizer"]["kind"], n_levels=levels,
                                     codebook_size=build.table.codebook_sizes[0], suffix_size=build.table.codebook_sizes[-1]),
                           init_state=build.table.tokenizer_state).fit(build.embeddings.vectors[build.table.items])
    perm = np.zeros((levels, build.table.codebook_sizes[0]), int)
    for level in range(levels):
        perm[level, build.table.codes_for(candidate.table.items)[:, level]] = candidate.table.codes[:, level]
    assert np.array_equal(coded, np.stack([perm[lv][plain.transform(vectors)[:, lv]] for lv in range(levels)], axis=1))


def test_a_warm_recipe_or_incremental_mode_without_a_carried_build_is_refused(built, chain, tmp_path):
    """A release created without --embeddings still loads (no build); a refresh that would
    continue a build it lacks fails before any work, in one sentence, and writes nothing."""
    _, opts, _ = built
    copy = tmp_path / "releases"
    shutil.copytree(chain[0], copy)
    releases = Releases(copy)
    releases.promote("r0001")
    assert releases.load_current(build=True).build is None
    for extra in (["--recipe", "stable"], ["--mode", "incremental"]):
        result = runner.invoke(app, ["refresh", *map(str, opts(85)), "--releases", str(copy), *extra, *REFRESH])
        assert result.exit_code == 2, result.output
        message = result.stderr.strip()
        assert "carries no SID build" in message and "--embeddings" in message and "--recipe cold" in message
        assert message.count(". ") == 0 and "\n" not in message  # one sentence, no traceback
        assert json.loads((copy / "last-refresh.json").read_text())["outcome"] == "failed"
    assert releases.ids() == ["r0001", "r0002", "r0003"]


def test_release_create_refuses_embeddings_the_table_was_not_coded_from(built, chain, tmp_path):
    d, opts, _ = built
    create = ["release", "create", *map(str, opts(70)), "--checkpoint", str(d / "base"), "--out", str(tmp_path / "r")]
    other = chain[0] / "releases" / "r0002" / "build" / "embeddings"  # a refresh's, not the ones --sids came from
    result = runner.invoke(app, [*create, "--sids", str(d / "sids"), "--embeddings", str(other)])
    assert result.exit_code == 2 and "coded from other embeddings" in result.stderr
    stateless = tmp_path / "stateless"  # a table without its tokenizer (as an older version aligned them)
    dataclasses.replace(SidTable.load(d / "sids"), tokenizer_state=None).save(stateless)
    result = runner.invoke(app, [*create, "--sids", str(stateless), "--embeddings", str(d / "emb")])
    assert result.exit_code == 2 and "no tokenizer state" in result.stderr
    assert not (tmp_path / "r").exists()


def test_refresh_help_shows_incremental_mode():
    help_text = invoke("refresh", "--help").stdout
    assert "--mode incremental" in help_text and "--embeddings" in help_text
