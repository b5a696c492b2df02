"""The HTTP service: recommendations from the current release, micro-batched, hot-swapped.

``POST /recommend`` takes a known ``user_id`` (the release's history of that user) or a
``history`` of item ids, ``k`` and ``exclude_seen``, and answers with items, scores,
titles and the id of the release that produced them. Concurrent requests wait at most
``max_wait_ms`` to be decoded together, up to ``max_batch`` at a time, in one beam search.

Hot-swap: a watcher polls the releases root's pointer (and ``POST /admin/reload`` checks at
once); a new current release is loaded and checked off the event loop, then swapped in
by one assignment. A request keeps the engine it started with, so in-flight requests
finish on their release; a release that fails to load is refused, logged and counted,
and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from freshsid.errors import FreshsidError
from freshsid.serve.engine import ANONYMOUS, Engine, Recommendation, UnknownUser
from freshsid.serve.release import Releases, load_release

log = logging.getLogger("freshsid.serve")
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    history: list[str] | None = None
    k: int = Field(10, ge=1)
    exclude_seen: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self


@dataclass
class Metrics:
    """Request counts by status, a latency histogram, reloads: the Prometheus text of /metrics."""

    requests: Counter = field(default_factory=Counter)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    reloads: Counter = field(default_factory=Counter)
    batches: int = 0
    batched_requests: int = 0

    def observe(self, status: int, millis: float) -> None:
        self.requests[status] += 1
        self.latency[next((i for i, b in enumerate(LATENCY_BUCKETS_MS) if millis <= b), len(LATENCY_BUCKETS_MS))] += 1
        self.latency_sum_ms += millis

    def text(self, release_id: str) -> str:
        lines = ["# TYPE freshsid_requests_total counter"]
        lines += [f'freshsid_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
        lines.append("# TYPE freshsid_request_latency_ms histogram")
        cumulative = np.cumsum(self.latency)
        for bound, count in zip([*map(str, LATENCY_BUCKETS_MS), "+Inf"], cumulative, strict=True):
            lines.append(f'freshsid_request_latency_ms_bucket{{le="{bound}"}} {count}')
        lines += [f"freshsid_request_latency_ms_sum {self.latency_sum_ms:.3f}",
                  f"freshsid_request_latency_ms_count {cumulative[-1]}",
                  "# TYPE freshsid_release_info gauge", f'freshsid_release_info{{release="{release_id}"}} 1',
                  "# TYPE freshsid_reloads_total counter"]
        lines += [f'freshsid_reloads_total{{outcome="{o}"}} {n}' for o, n in sorted(self.reloads.items())]
        lines += ["# TYPE freshsid_batches_total counter", f"freshsid_batches_total {self.batches}",
                  f"freshsid_batched_requests_total {self.batched_requests}"]
        return "\n".join(lines) + "\n"


@dataclass
class _Pending:
    engine: Engine
    history: np.ndarray
    user: int
    k: int
    exclude_seen: bool
    done: asyncio.Future


class Service:
    """The engine in service, the micro-batcher and the release watcher."""

    def __init__(self, releases: Releases, *, beam: int = 100, max_batch: int = 32, max_wait_ms: float = 5.0,
                 poll_seconds: float = 1.0, batching: bool = True) -> None:
        self.releases, self.beam = releases, beam
        self.max_batch, self.max_wait, self.poll, self.batching = max_batch, max_wait_ms / 1000, poll_seconds, batching
        self.engine = Engine(releases.load_current(), beam=beam)
        self.metrics = Metrics()
        self._refused: str | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._reload_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._batcher()), asyncio.create_task(self._watch())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    async def recommend(self, request: RecommendRequest) -> tuple[str, list[Recommendation]]:
        engine = self.engine  # this request finishes on the release it starts on
        if request.user_id is not None:
            histories, users = engine.for_users([request.user_id])
            history, user = histories[0], int(users[0])
        else:
            history, user = engine.for_history(request.history or []), ANONYMOUS
        if request.k > engine.beam:
            raise FreshsidError(f"k = {request.k} is more than the service's beam width {engine.beam}; ask for fewer items.")
        if not self.batching:
            recs = await asyncio.to_thread(engine.recommend, history[None], np.array([user]), [request.k],
                                           [request.exclude_seen])
            return engine.release_id, recs[0]
        done = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(engine, history, user, request.k, request.exclude_seen, done))
        return engine.release_id, await done

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            for engine in {id(p.engine): p.engine for p in batch}.values():  # one decode per release
                group = [p for p in batch if p.engine is engine]
                try:
                    recs = await asyncio.to_thread(engine.recommend, np.stack([p.history for p in group]),
                                                   np.array([p.user for p in group]), [p.k for p in group],
                                                   [p.exclude_seen for p in group])
                except Exception as exc:  # noqa: BLE001 - handed to the requests, which answer with it
                    for p in group:
                        p.done.set_exception(exc)
                    continue
                self.metrics.batches += 1
                self.metrics.batched_requests += len(group)
                for p, r in zip(group, recs, strict=True):
                    p.done.set_result(r)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Swap in the pointer's release if it changed and loads; refuse it otherwise."""
        async with self._reload_lock:
            try:
                current = self.releases.current
            except FreshsidError as exc:
                return self._refuse(None, str(exc))
            if current is None or current == self.engine.release_id or current == self._refused:
                return {"release": self.engine.release_id, "changed": False, "refused": self._refused}
            try:
                engine = await asyncio.to_thread(lambda: Engine(load_release(self.releases.path(current)), beam=self.beam))
            except FreshsidError as exc:
                return self._refuse(current, str(exc))
            self.engine, self._refused = engine, None
            self.metrics.reloads["swapped"] += 1
            log.info("now serving release %s", current)
            return {"release": current, "changed": True, "refused": None}

    def _refuse(self, release_id: str | None, reason: str) -> dict[str, Any]:
        self._refused = release_id
        self.metrics.reloads["refused"] += 1
        log.error("release %s refused, %s keeps serving: %s", release_id, self.engine.release_id, reason)
        return {"release": self.engine.release_id, "changed": False, "refused": release_id, "reason": reason}


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with service.running():
            yield

    app = FastAPI(title="freshsid", lifespan=lifespan)

    @app.middleware("http")
    async def measure(request: Request, call_next):  # noqa: ANN001, ANN202 - FastAPI's middleware signature
        started = time.perf_counter()
        response = await call_next(request)
        if request.url.path == "/recommend":
            service.metrics.observe(response.status_code, (time.perf_counter() - started) * 1000)
        return response

    @app.post("/recommend")
    async def recommend(body: RecommendRequest) -> JSONResponse:
        try:
            release_id, recs = await service.recommend(body)
        except FreshsidError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, UnknownUser) else 422)
        return JSONResponse({"release": release_id, "items": [r.__dict__ for r in recs]})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "release": service.engine.release_id}

    @app.get("/release")
    async def release() -> dict[str, Any]:
        manifest = service.engine.release.manifest
        return {"release": service.engine.release_id, **{k: manifest.info.get(k) for k in
                                                        ("parent_release", "data", "recipe", "metrics", "n_items")}}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.text(service.engine.release_id))

    @app.post("/admin/reload")
    async def reload() -> dict[str, Any]:
        return await service.reload()

    return app


@contextlib.contextmanager
def serve_in_thread(service: Service, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run the app on a free port of ``host`` in a background thread; yields its base URL.
    For tests and benchmarks: the server stops when the block ends."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    # Keep-alive well past uvicorn's 5 s: on a starved machine a pooled connection can idle
    # that long, and the server closing it just as the client reuses it fails that request.
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", timeout_keep_alive=120))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the test server did not start")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
