"""The HTTP service: recommendations from the current release, micro-batched, hot-swapped.

``POST /recommend`` takes a known ``user_id`` (the release's history of that user) or a
``history`` of item ids, ``k`` and ``exclude_seen``, and answers with items, scores,
titles and the id of the release that produced them. Concurrent requests are decoded
together, up to ``max_batch`` at a time, in one beam search (see :class:`Service`).

Hot-swap: a watcher polls the releases root's pointer (and ``POST /admin/reload`` checks at
once); a new current release is loaded and checked off the event loop, then swapped in
by one assignment. A request keeps the engine it started with, so in-flight requests
finish on their release; a release that fails to load, or a pointer that is not one, is
refused, logged and counted once (not again at every poll until it changes), and the old
release keeps serving. The watcher outlives any error of its own, counted as
``outcome="error"``. Swaps and refusals are one JSON line each (:mod:`freshsid.serve.journal`).

``GET /release`` says what the release in service is (lineage, windows, counts and times
of the data it saw, recipe, gate figures), never which user touched which item. Ids up to
the longest the release serves are accepted back, whatever ``max_id_chars`` says.

Requests are bounded (:mod:`freshsid.serve.requests`: size, fields, lengths, slow
clients); what is refused gets a 4xx with a message. An unexpected error gets 500 and is
counted in ``/metrics`` (:mod:`freshsid.serve.metrics`) like every other answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response

from freshsid.serve.config import ServeConfig
from freshsid.errors import FreshsidError
from freshsid.serve import journal
from freshsid.serve.engine import ANONYMOUS, Engine, UnknownUser
from freshsid.serve.metrics import ServiceMetrics
from freshsid.serve.requests import BadRequest, BoundedH11Protocol, RecommendRequest, parse_request, read_body
from freshsid.serve.release import POINTER, Release, Releases, load_release

log = logging.getLogger("freshsid.serve")


@dataclass
class _Pending:
    engine: Engine
    history: np.ndarray
    user: int
    k: int
    exclude_seen: bool
    done: asyncio.Future
    queued: float


def _timed(call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``call(*args)`` and the seconds it took, timed on the thread that runs it."""
    started = time.perf_counter()
    return call(*args), time.perf_counter() - started


class Service:
    """The engine in service, the micro-batcher and the release watcher.

    Batching: the batcher decodes whatever has queued, all of it (up to ``max_batch``) in
    one beam search. Before it starts, it waits for requests the server is already reading
    (their body, their parsing) to join, for at most ``max_wait_ms`` or the fixed cost of a
    decode (:class:`DecodeCost`), whichever is longer: a request that joins saves that
    cost, which is all the wait costs the others; a lone request (none arriving) is
    decoded at once. Lookups and the JSON answer happen on the event loop.

    Decoding runs on one dedicated thread whose torch thread count is set there: torch's
    setting is per thread, and a pool of threads each with its own OpenMP team would
    oversubscribe the cores. By default it is one less than the process's, so that the event
    loop (reading, parsing, answering) keeps a core: on 2 shared cores a decode over both
    waited on the loop, and a lone request took twice as long (``benchmarks/RESULTS.md``).
    With ``decoder = "process"`` that thread hands each batch to the engine's own process
    (:mod:`freshsid.serve.decoder`), which decodes with those torch threads and no GIL
    shared with the loop.
    """

    def __init__(self, releases: Releases, config: ServeConfig | None = None) -> None:
        self.releases, self.config = releases, config or ServeConfig()
        self.metrics = ServiceMetrics(releases.root)
        # read on the thread that made the service; by default the event loop keeps a core of its own
        self._threads = self.config.threads or max(1, torch.get_num_threads() - 1)
        self._use(self._engine(releases.load_current()))
        self._refused: str | None = None  # what was refused last: a release id, or a pointer's stamp
        self._error: str | None = None  # the watcher's last error, logged once
        self._waiting: deque[_Pending] = deque()
        self._ready: asyncio.Event | None = None
        self._arriving = 0  # requests being read or parsed: about to queue
        self.decode_cost = DecodeCost()
        self._decoder: ThreadPoolExecutor | None = None
        self._reload_lock = asyncio.Lock()

    def _engine(self, release: Release) -> Engine:
        process = self._threads if self.config.decoder == "process" else None
        return Engine(release, beam=self.config.beam, compile_step=self.config.compile, process_threads=process)

    def _use(self, engine: Engine) -> None:
        self.engine = engine
        # an id the release serves is accepted back, even one longer than the configured bound
        self.limits = self.config.model_copy(update={"max_id_chars": max(self.config.max_id_chars,
                                                                         engine.longest_id)})
        manifest = engine.release.manifest
        self.metrics.serving(engine.release_id, manifest.created, manifest.info.get("data", {}).get("until_time"))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._ready = asyncio.Event()
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="freshsid-decode", initializer=torch.set_num_threads,
                                           initargs=(self._threads,))
        tasks = [asyncio.create_task(self._batcher()), asyncio.create_task(self._watch())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            self._decoder.shutdown(wait=False)
            self.engine.close()

    async def answer(self, request: Request) -> tuple[int, bytes]:
        """(status, JSON body) for one POST /recommend."""
        try:
            self._arriving += 1
            try:
                body = parse_request(await read_body(request, self.limits), self.limits)
            finally:
                self._arriving -= 1  # recommend() queues it before anything else can run
            return 200, await self.recommend(body)
        except FreshsidError as exc:
            status = exc.status if isinstance(exc, BadRequest) else 404 if isinstance(exc, UnknownUser) else 422
            return status, json.dumps({"error": str(exc)}).encode()

    async def recommend(self, request: RecommendRequest) -> bytes:
        engine = self.engine  # this request finishes on the release it starts on
        if request.user_id is not None:
            histories, users = engine.for_users([request.user_id])
            history, user, uncoded = histories[0], int(users[0]), engine.user_uncoded(request.user_id)
        else:
            (history, uncoded), user = engine.for_history(request.history or []), ANONYMOUS
        if request.k > engine.beam:
            raise FreshsidError(f"k = {request.k} is more than the service's beam width {engine.beam}; ask for fewer items.")
        self.metrics.observe_history(uncoded)
        if not self.config.batching:
            ((items, scores),), seconds = await self._on_decoder(engine, history[None], np.array([user]),
                                                                 [request.k], [request.exclude_seen])
            self.metrics.decode.observe(seconds)  # a batch of one
            self.metrics.batch_size.observe(1)
        else:
            done = asyncio.get_running_loop().create_future()
            self._waiting.append(_Pending(engine, history, user, request.k, request.exclude_seen, done,
                                          time.perf_counter()))
            self._ready.set()
            items, scores = await done
        self.metrics.observe_items(engine.ages(items))
        return engine.render(items, scores)

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            # wait for the requests being read to join, within the window
            deadline = loop.time() + max(self.config.max_wait_ms / 1000, self.decode_cost.fixed)
            while len(self._waiting) < self.config.max_batch and self._arriving > 0 and (left := deadline - loop.time()) > 0:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), left)
            batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.config.max_batch))]
            if not self._waiting:
                self._ready.clear()
            for engine in {id(p.engine): p.engine for p in batch}.values():  # one decode per release
                await self._decode(engine, [p for p in batch if p.engine is engine])

    async def _decode(self, engine: Engine, group: list[_Pending]) -> None:
        started = time.perf_counter()
        for p in group:
            self.metrics.queue_wait.observe(started - p.queued)
        try:
            results, seconds = await self._on_decoder(engine, np.stack([p.history for p in group]),
                                                      np.array([p.user for p in group]), [p.k for p in group],
                                                      [p.exclude_seen for p in group])
        except Exception as exc:  # noqa: BLE001 - handed to the requests, which answer with it
            for p in group:
                p.done.set_exception(exc)
            return
        self.decode_cost.observe(len(group), seconds)
        self.metrics.decode.observe(seconds)
        self.metrics.handoff.observe(max(0.0, time.perf_counter() - started - seconds))
        self.metrics.batch_size.observe(len(group))
        for p, result in zip(group, results, strict=True):
            p.done.set_result(result)

    def _on_decoder(self, engine: Engine, *args: Any) -> asyncio.Future:
        """``engine.decode(*args)`` on the decoding thread: its result and its seconds there."""
        call = functools.partial(_timed, engine.decode, *args)
        return asyncio.get_running_loop().run_in_executor(self._decoder, call)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - the watcher outlives any bug: counted, logged once
                self.metrics.reloads.labels("error").inc()
                if repr(exc) != self._error:
                    self._error = repr(exc)
                    log.exception("the release watcher failed; it keeps watching")

    async def reload(self) -> dict[str, Any]:
        """Swap in the pointer's release if it changed and loads; refuse it (once) otherwise."""
        async with self._reload_lock:
            try:
                current = self.releases.current
            except FreshsidError as exc:
                return self._refuse(None, str(exc), key=f"pointer {self._pointer_stamp()}")
            if current is None or current == self.engine.release_id:
                self._refused = None
                return {"release": self.engine.release_id, "changed": False}
            if current == self._refused:
                return {"release": self.engine.release_id, "changed": False, "refused": current}
            try:
                engine = await asyncio.to_thread(lambda: self._engine(load_release(self.releases.path(current))))
            except Exception as exc:  # noqa: BLE001 - whatever a release fails with, the old one keeps serving
                return self._refuse(current, str(exc) if isinstance(exc, FreshsidError) else repr(exc), key=current)
            before = self.engine.release_id
            self._use(engine)
            self._refused = None
            self.metrics.reloads.labels("swapped").inc()
            journal.record("swap", release=current, previous=before)
            return {"release": current, "changed": True}

    def _refuse(self, release_id: str | None, reason: str, *, key: str) -> dict[str, Any]:
        """Refuse ``release_id`` (None: the pointer itself); counted and logged once per ``key``."""
        if key != self._refused:
            self._refused = key
            self.metrics.reloads.labels("refused").inc()
            journal.record("release_refused", release=release_id, serving=self.engine.release_id, reason=reason)
        return {"release": self.engine.release_id, "changed": False, "refused": release_id, "reason": reason}

    def _pointer_stamp(self) -> str:
        """Which version of the pointer file this is: a hand edit or a rename changes it."""
        try:
            st = (self.releases.root / POINTER).stat()
        except OSError:
            return "absent"
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


class DecodeCost:
    """What a decode of n requests costs, fitted on the recent batches as ``fixed + n * per_request``
    seconds (least squares, each batch's weight halving every ``halflife`` batches).

    ``fixed`` is what the requests of a batch share (the history prefill's overhead, the
    per-call work of the search): what one more request saves by joining a batch rather than
    waiting for the next. While every batch has had the same size the split is unknown and
    ``fixed`` is their whole cost; before any batch it is 0."""

    def __init__(self, halflife: float = 50.0) -> None:
        self._decay = 0.5 ** (1 / halflife)
        self._sums = np.zeros(5)  # weight, n, n^2, seconds, n * seconds (weighted)

    def observe(self, n: int, seconds: float) -> None:
        self._sums = self._sums * self._decay + np.array([1.0, n, n * n, seconds, n * seconds])

    @property
    def fixed(self) -> float:
        w, n, nn, t, nt = self._sums
        if w == 0:
            return 0.0
        spread = w * nn - n * n
        if spread <= 1e-9 * w * w:  # one batch size so far
            return t / w
        per_request = max(0.0, (w * nt - n * t) / spread)
        return min(t / w, max(0.0, (t - per_request * n) / w))


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with service.running():
            yield

    app = FastAPI(title="freshsid", lifespan=lifespan)
    app.add_middleware(_Measure, service=service)

    @app.post("/recommend")
    async def recommend(request: Request) -> Response:
        status, body = await service.answer(request)
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "release": service.engine.release_id}

    @app.get("/release")
    async def release() -> dict[str, Any]:
        return service.engine.describe()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload")
    async def reload() -> dict[str, Any]:
        return await service.reload()

    return app


class _Measure:
    """Pure ASGI middleware: counts and times every POST /recommend answer by status and
    release, and turns an unexpected error into a counted 500 (Starlette's own error
    handler answers outside any middleware, where nothing would count it)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/recommend":
            await self.app(scope, receive, send)
            return
        started, release_id, status = time.perf_counter(), self.service.engine.release_id, 500
        sent = False

        async def sending(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status, sent = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("POST /recommend failed")
            status = 500
            if not sent:
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"error": "Internal error; see the server\'s log."}'})
        finally:
            self.service.metrics.requests.labels(str(status), release_id).inc()
            self.service.metrics.latency.observe(time.perf_counter() - started)


def server_config(service: Service, *, host: str, port: int = 0, log_level: str = "info") -> Any:
    """The uvicorn configuration of ``service``: the bounded protocol, its timeouts."""
    import uvicorn

    protocol = type("Protocol", (BoundedH11Protocol,), {"header_timeout_s": service.config.header_timeout_s})
    return uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, http=protocol,
                          timeout_keep_alive=service.config.keep_alive_s)


@contextlib.contextmanager
def serve_in_thread(service: Service, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run the app on a free port of ``host`` in a background thread; yields its base URL.
    For tests and benchmarks: the server stops when the block ends."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(server_config(service, host=host, log_level="warning"))
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
