"""The HTTP service against hostile and unlucky clients, and what /metrics shows of it.

One tiny release (an untrained model over a synthetic log, seconds to build) served on
127.0.0.1 with small limits and short timeouts; every loop is bounded."""

import gc
import os
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from freshsid.serve.config import ServeConfig
from freshsid.serve.http import DecodeCost, Service, serve_in_thread

LIMITS = ServeConfig(beam=20, max_body_bytes=2048, max_history=50, max_id_chars=32, header_timeout_s=0.5,
                     body_timeout_s=0.5, poll_seconds=0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_factory):
    releases = tiny_factory(tmp_path_factory.mktemp("serve")).releases
    service = Service(releases, LIMITS)
    with serve_in_thread(service) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield base, client, service, releases


def metric_families(client):
    return {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}


def sample(families, name, **labels):
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


BAD = [
    (b'{"user_id": "1", "k": NaN}', 400, "not a finite number"),
    (b'{"user_id": "1", "k": Infinity}', 400, "not a finite number"),
    (b'{"history": ["1"], "k": 3, "x": -Infinity}', 400, "not a finite number"),
    (b"", 400, "not JSON"),
    (b"{", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[]", 422, "JSON object"),
    (b'"user"', 422, "JSON object"),
    (b"null", 422, "JSON object"),
    (b'{"user_id": "1", "k": true}', 422, "k"),
    (b'{"user_id": "1", "k": 1.0}', 422, "k"),
    (b'{"user_id": "1", "k": "3"}', 422, "k"),
    (b'{"user_id": "1", "k": 0}', 422, "k"),
    (b'{"user_id": "1", "k": -2}', 422, "k"),
    (b'{"user_id": "1", "k": 1e400}', 400, "not a finite number"),
    (b'{"user_id": 5}', 422, "user_id"),
    (b'{"history": "1"}', 422, "history"),
    (b'{"history": [1, 2]}', 422, "history"),
    (b'{"user_id": "1", "history": ["1"]}', 422, "exactly one"),
    (b'{"k": 3}', 422, "exactly one"),
    (b'{"user_id": "1", "exclude_seen": "yes"}', 422, "exclude_seen"),
    (b'{"user_id": "1", "extra": 1}', 422, "extra"),
    (b"[" * 1100, 400, "nests"),  # the parser's recursion limit, reached before any check: a 500 once
    (b'{"history": ["1"], "x": ' + b'{"a": ' * 9 + b"1" + b"}" * 9 + b"}", 400, "nests"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD)
def test_every_malformed_body_gets_a_4xx_with_a_message(served, body, status, words):
    _, client, _, _ = served
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert client.post("/recommend", json={"user_id": "1", "k": 3}).status_code == 200  # still serving


def test_oversized_bodies_long_histories_and_long_ids_are_refused(served):
    _, client, _, _ = served
    big = b'{"history": [' + b",".join([b'"1"'] * 1000) + b"]}"
    assert client.post("/recommend", content=big).status_code == 413
    chunked = client.post("/recommend", content=iter([big[:1500], big[1500:]]))  # no content-length
    assert chunked.status_code == 413
    r = client.post("/recommend", json={"history": ["1"] * (LIMITS.max_history + 1)})
    assert r.status_code == 422 and "more than the 50" in r.json()["error"]
    r = client.post("/recommend", json={"user_id": "u" * 33})
    assert r.status_code == 422 and "u" * 33 not in r.text


def test_slow_clients_are_cut_off_and_the_server_keeps_serving(served):
    base, client, _, _ = served
    host, port = base.removeprefix("http://").split(":")
    slow_head = socket.create_connection((host, int(port)), timeout=10)
    slow_head.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    slow_body = socket.create_connection((host, int(port)), timeout=10)
    slow_body.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"user_id\"")
    started = time.monotonic()
    assert slow_head.recv(1024) == b""  # closed by the server, not by our 10 s timeout
    assert time.monotonic() - started < 5
    answer = b""
    for _ in range(20):  # the head and the body may come in separate packets
        chunk = slow_body.recv(4096)
        answer += chunk
        if not chunk or b"took more than" in answer:
            break
    assert answer.startswith(b"HTTP/1.1 408") and b"took more than" in answer
    slow_head.close(), slow_body.close()
    assert client.post("/recommend", json={"user_id": "1", "k": 3}).status_code == 200


def test_exclude_seen_returns_k_unseen_items(served):
    _, client, service, _ = served
    engine = service.engine
    for user in engine.user_ids()[:20]:
        history, _ = engine.for_users([user])
        seen = {engine._ids[i] for i in history[0].tolist() if i in engine._ids}
        r = client.post("/recommend", json={"user_id": user, "k": LIMITS.beam, "exclude_seen": True}).json()
        items = [x["item_id"] for x in r["items"]]
        assert len(items) == LIMITS.beam and not seen & set(items) and len(set(items)) == len(items)


def test_a_server_error_answers_500_and_is_counted(served, monkeypatch):
    _, client, service, _ = served
    before = sample(metric_families(client), "freshsid_requests_total", status="500") or 0

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.engine, "decode", broken)
    r = client.post("/recommend", json={"user_id": "1", "k": 3})
    assert r.status_code == 500 and "Internal error" in r.json()["error"]
    monkeypatch.undo()
    assert sample(metric_families(client), "freshsid_requests_total", status="500") == before + 1
    assert client.post("/recommend", json={"user_id": "1", "k": 3}).status_code == 200


def test_metrics_parse_and_have_the_named_series(served):
    _, client, service, _ = served
    for _ in range(3):
        assert client.post("/recommend", json={"history": ["45", "46", "1"], "k": 5}).status_code == 200
    families = metric_families(client)
    for name in ("freshsid_requests", "freshsid_request_duration_seconds", "freshsid_batch_size",
                 "freshsid_queue_wait_seconds", "freshsid_decode_seconds", "freshsid_decode_handoff_seconds",
                 "freshsid_reloads", "freshsid_release_info",
                 "freshsid_release_age_seconds", "freshsid_release_data_until_timestamp_seconds",
                 "freshsid_uncoded_history_share", "freshsid_requests_uncoded_history", "freshsid_recommended_items",
                 "freshsid_last_refresh_outcome", "freshsid_last_refresh_timestamp_seconds"):
        assert name in families, name
        assert families[name].documentation  # HELP
    assert families["freshsid_request_duration_seconds"].type == "histogram"
    assert families["freshsid_batch_size"].type == "histogram"
    # every batch's decode is timed on its thread, and what it took beyond that apart
    count = service.metrics.registry.get_sample_value
    assert count("freshsid_decode_handoff_seconds_count") == count("freshsid_decode_seconds_count") > 0
    release = service.engine.release_id
    assert sample(families, "freshsid_release_info", release=release) == 1
    assert sample(families, "freshsid_requests_total", status="200", release=release) >= 3
    assert 0 < sample(families, "freshsid_release_age_seconds") < 3600
    # items 45 and 46 are not coded by the release: those requests count as stale
    assert sample(families, "freshsid_requests_uncoded_history_total") >= 3
    assert 0 < sample(families, "freshsid_uncoded_history_share") <= 1
    ages = {s.labels["age"]: s.value for s in families["freshsid_recommended_items"].samples if s.name.endswith("_total")}
    assert sum(ages.values()) >= 15 and set(ages) <= {"1d", "7d", "30d", "90d", "365d", "older"}
    assert sample(families, "freshsid_batch_size_count") >= 3


def test_the_serve_config_file_sets_limits_and_refuses_unknown_or_wrong_settings(tmp_path):
    from freshsid.serve.config import serve_config
    from freshsid.errors import FreshsidError

    path = tmp_path / "serve.toml"
    path.write_text("max_body_bytes = 4096\nbeam = 50\n")
    config = serve_config(path, beam=None, max_batch=8)
    assert (config.max_body_bytes, config.beam, config.max_batch) == (4096, 50, 8)
    for text in ("max_body_bytes = 'big'\n", "max_bodybytes = 1\n", "header_timeout_s = 0\n", "beam = [\n"):
        path.write_text(text)
        with pytest.raises(FreshsidError, match="serve"):
            serve_config(path)


def test_a_fresh_server_exports_the_series_its_alerts_read_at_zero(tiny):
    """increase() of a series that appears at its first count is 0: the refusal and 5xx
    counters exist, at 0, from the start."""
    text = Service(tiny.releases, LIMITS).metrics.text().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for outcome in ("refused", "swapped", "error"):
        assert sample(families, "freshsid_reloads_total", outcome=outcome) == 0
    assert sample(families, "freshsid_requests_total", status="500", release="r0002") == 0


def test_without_batching_each_request_is_a_decode_of_one_and_is_timed(tiny):
    service = Service(tiny.releases, LIMITS.model_copy(update={"batching": False}))
    with serve_in_thread(service) as base, httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(2):
            assert client.post("/recommend", json={"user_id": "1", "k": 3}).status_code == 200
    count = service.metrics.registry.get_sample_value
    assert count("freshsid_decode_seconds_count") == count("freshsid_batch_size_count") == 2
    assert count("freshsid_batch_size_sum") == 2 and count("freshsid_decode_seconds_sum") > 0


def test_release_shows_counts_and_times_never_which_user_touched_which_item(served):
    _, client, service, _ = served
    shown = client.get("/release").json()
    recorded = service.engine.release.manifest.info["data"]
    assert recorded["last_second"] and "last_second" not in shown["data"] and "days" not in shown["data"]
    assert shown["data"]["last_second_events"] == len(recorded["last_second"])
    assert shown["data"]["until_time"] == recorded["until_time"] and shown["release"] == service.engine.release_id
    assert not any(isinstance(v, list) for v in shown["data"].values())


def test_a_pointer_that_is_not_one_is_refused_once_and_the_next_promote_swaps_in(tiny, caplog):
    """``{"current": 5}`` once killed the watcher silently: later promotions were never
    swapped in. Now: one refusal line and one count per change of the pointer, the old
    release serving, and the next valid promote swapped in by the watcher."""
    import asyncio
    import json

    caplog.set_level("INFO", logger="freshsid.events")
    tiny.releases.rollback()  # r0001 in service, r0002 to promote later
    service = Service(tiny.releases, LIMITS.model_copy(update={"poll_seconds": 0.05}))
    pointer = tiny.releases.root / "CURRENT.json"

    async def operate():
        async with service.running():
            for text in ('{"current": 5, "previous": []}', "not json"):
                pointer.write_text(text)
                await asyncio.sleep(0.4)  # eight polls
            tiny.releases.root.joinpath("CURRENT.json").write_text(json.dumps({"current": "r0001", "previous": []}))
            tiny.releases.promote("r0002")
            for _ in range(40):
                await asyncio.sleep(0.05)
                if service.engine.release_id == "r0002":
                    break

    asyncio.run(operate())
    assert service.engine.release_id == "r0002"
    families = {f.name: f for f in text_string_to_metric_families(service.metrics.text().decode())}
    assert sample(families, "freshsid_reloads_total", outcome="refused") == 2  # once per pointer, not per poll
    assert sample(families, "freshsid_reloads_total", outcome="swapped") == 1
    assert sample(families, "freshsid_reloads_total", outcome="error") == 0
    refused = [json.loads(r.getMessage()) for r in caplog.records if '"release_refused"' in r.getMessage()]
    assert len(refused) == 2 and all("is not a release pointer" in e["reason"] for e in refused)


def test_ids_longer_than_the_request_bound_are_served_and_accepted_back(tmp_path, tiny_factory):
    releases = tiny_factory(tmp_path, item_prefix="i" * 40).releases  # 41- and 42-character item ids; the bound says 32
    with serve_in_thread(Service(releases, LIMITS)) as base, httpx.Client(base_url=base, timeout=30) as client:
        items = [x["item_id"] for x in client.post("/recommend", json={"user_id": "1", "k": 3}).json()["items"]]
        assert max(map(len, items)) > LIMITS.max_id_chars
        assert client.post("/recommend", json={"history": items, "k": 3}).status_code == 200
        assert client.post("/recommend", json={"history": ["j" * 60], "k": 3}).status_code == 422


def test_decoding_runs_on_one_thread_with_the_process_torch_threads(served):
    import torch

    _, _, service, _ = served
    assert service._decoder._max_workers == 1
    # conftest sets 1 thread; the default leaves the event loop one core, but never fewer than 1 thread
    assert service._decoder.submit(torch.get_num_threads).result() == max(1, torch.get_num_threads() - 1) == 1


def test_decode_cost_splits_what_a_batch_shares_from_what_each_request_adds():
    cost = DecodeCost()
    assert cost.fixed == 0.0
    cost.observe(1, 0.02)
    cost.observe(1, 0.02)
    assert cost.fixed == pytest.approx(0.02)  # one batch size: the split is unknown, a batch costs 20 ms
    for n in (1, 4, 8, 16, 32, 8):
        cost.observe(n, 0.007 + 0.004 * n)
    assert cost.fixed < 0.02
    recent = DecodeCost(halflife=1)
    for n in (1, 4, 8, 16, 32) * 20:
        recent.observe(n, 0.007 + 0.004 * n)
    assert recent.fixed == pytest.approx(0.007, rel=1e-3)


def test_a_decode_process_answers_as_the_decoding_thread_and_restarts_when_it_dies(tiny):
    from freshsid.errors import FreshsidError
    from freshsid.serve.engine import Engine

    release = tiny.releases.load_current()
    here = Engine(release, beam=20)
    apart = Engine(release, beam=20, process_threads=1)
    try:
        histories, users = here.for_users(here.user_ids()[:7])
        ks, exclude = [3, 20, 1, 5, 20, 2, 9], [False, True, False, True, False, False, True]
        for (items, scores), (items_apart, scores_apart) in zip(here.decode(histories, users, ks, exclude),
                                                                apart.decode(histories, users, ks, exclude),
                                                                strict=True):
            assert items_apart.tolist() == items.tolist()
            assert scores_apart == pytest.approx(scores, abs=1e-5)
        with pytest.raises(FreshsidError, match="must be >= 1"):  # the child's own refusal, raised here as it is
            apart._search(histories, users, top_k=0, beam=5, batch_size=7)
        child = apart._search._process
        assert child.pid != os.getpid() and child.is_alive()
        child.kill()
        child.join()
        again = apart.decode(histories, users, ks, exclude)  # a new child
        assert apart._search._process.pid != child.pid
        assert [items.tolist() for items, _ in again] == [items.tolist() for items, _ in here.decode(histories, users, ks, exclude)]
    finally:
        apart.close()
    assert not apart._search._process.is_alive()


def test_a_service_decoding_in_a_process_serves_swaps_and_lets_the_old_process_end(tiny):
    from freshsid.serve.decoder import DecodeProcess

    service = Service(tiny.releases, LIMITS.model_copy(update={"decoder": "process"}))
    assert isinstance(service.engine._search, DecodeProcess)
    with serve_in_thread(service) as base, httpx.Client(base_url=base, timeout=30) as client:
        user_ids = service.engine.user_ids()[:3]
        answers = [client.post("/recommend", json={"user_id": u, "k": 5}) for u in user_ids]
        assert [a.status_code for a in answers] == [200] * 3
        histories, users = service.engine.for_users(user_ids)
        expected = service.engine.recommender(histories, users, top_k=5, beam=LIMITS.beam, batch_size=1)[0]
        assert [[x["item_id"] for x in a.json()["items"]] for a in answers] == [
            [service.engine._ids[i] for i in row] for row in expected.tolist()]
        old = service.engine._search._process
        tiny.releases.rollback()
        assert client.post("/admin/reload").json()["changed"]
        assert client.post("/recommend", json={"user_id": user_ids[0], "k": 5}).json()["release"] == "r0001"
        deadline = time.monotonic() + 30
        while old.is_alive() and time.monotonic() < deadline:
            gc.collect()  # the swapped-out engine, once collected, closes its pipe; its child then ends
            time.sleep(0.1)
        assert not old.is_alive()
        current = service.engine._search._process
    assert not current.is_alive()  # the service ends its engine's process when it stops
