"""The beam search in a process of its own, called like the :class:`Recommender` it runs.

In the server the decode shares an interpreter with the event loop, and the beam search
gives up the GIL at every torch op and must take it back: while the loop reads, parses
and answers requests, each op waits for it (``benchmarks/RESULTS.md``: a busy Python
thread beside a decode makes it 60 times slower, a busy process costs it nothing). A
:class:`DecodeProcess` runs the recommender in a spawned child with its own torch thread
count; histories go to it through a pipe and items and scores come back, so the loop's
Python never stands in the decode's way. One process per engine: a swapped-out release's
process ends with its engine.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from freshsid.errors import FreshsidError
from freshsid.retriever.pipeline import Recommender


class DecodeProcess:
    """``recommender(histories, users, top_k=..., beam=..., batch_size=...)``, computed in a
    child process with ``threads`` torch threads. With ``compile_step`` the child compiles
    the decoding step and decodes once before the constructor returns. Calls from several
    threads take turns; an error in the child is raised here (a :class:`FreshsidError` as
    one, anything else as a ``RuntimeError`` naming it)."""

    def __init__(self, recommender: Recommender, *, threads: int, compile_step: bool = False) -> None:
        context = multiprocessing.get_context("spawn")  # a fork would copy the loop's threads and torch's pools
        self._conn, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, recommender, threads, compile_step),
                                  name="freshsid-decode", daemon=True)
        process.start()
        child.close()
        self._lock = threading.Lock()
        self._close = weakref.finalize(self, _stop, process, self._conn)
        self._answer()  # ready (and compiled), or why not

    def __call__(self, histories: np.ndarray, users: np.ndarray, **options: Any) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            try:
                self._conn.send((histories, users, options))
            except (OSError, ValueError):  # the pipe is closed: the child is gone
                raise RuntimeError("The decode process has ended; restart the service.") from None
            return self._answer()

    def close(self) -> None:
        """End the child (also done when this object is collected, or at exit)."""
        self._close()

    def _answer(self) -> Any:
        try:
            ok, value = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("The decode process has ended; restart the service.") from None
        if ok:
            return value
        kind, message = value
        raise FreshsidError(message) if kind is None else RuntimeError(f"{kind} in the decode process: {message}")


def _stop(process: multiprocessing.Process, conn: Connection) -> None:
    conn.close()  # the child's recv ends, and so does the child
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()


def _serve(conn: Connection, recommender: Recommender, threads: int, compile_step: bool) -> None:
    """The child: decode what comes through ``conn`` until it closes."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which then ends this process
    torch.set_num_threads(threads)
    try:
        if compile_step:  # compiled here, by one decode, rather than on a request
            recommender.model.compile_step()
            empty = np.full((1, recommender.model.config.max_history), -1, dtype=np.int64)
            recommender(empty, np.zeros(1, dtype=np.int64), top_k=1)
        conn.send((True, None))
    except Exception as exc:  # noqa: BLE001 - told to the parent, which raises it
        conn.send((False, _described(exc)))
        return
    while True:
        try:
            histories, users, options = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = (True, recommender(histories, users, **options))
        except Exception as exc:  # noqa: BLE001 - told to the parent, which raises it
            answer = (False, _described(exc))
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return


def _described(exc: Exception) -> tuple[str | None, str]:
    """(None for a FreshsidError, else the exception's type name; its message): always picklable."""
    return (None if isinstance(exc, FreshsidError) else type(exc).__name__), str(exc)
