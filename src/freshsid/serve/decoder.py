"""The beam search in a process of its own, called like the :class:`Recommender` it runs.

In the server the decode shares an interpreter with the event loop, and the beam search
gives up the GIL at every torch op and must take it back: while the loop reads, parses
and answers requests, each op waits for it (``benchmarks/RESULTS.md``: a busy Python
thread beside a decode makes it 60 times slower, a busy process costs it nothing). A
:class:`DecodeProcess` runs the recommender in a spawned child with its own torch thread
count; histories go to it through a pipe and items and scores come back, so the loop's
Python never stands in the decode's way.

One process per engine. An engine that is swapped out closes its pipe when it is
collected, and its child then ends by itself (nothing waits for it on the event loop);
:meth:`DecodeProcess.close` ends it at once. A child that dies (killed, out of memory)
fails the call that was in it, and the next call starts a new one. The weights reach the
child through shared memory (torch's pickling), so ``/dev/shm`` must hold the model.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import traceback
import weakref
from multiprocessing.connection import Connection

import numpy as np

from freshsid.errors import FreshsidError
from freshsid.retriever.pipeline import Recommender
from freshsid.runtime import current, repeatable


class DecodeProcess:
    """``recommender(histories, users, top_k=..., beam=..., batch_size=...)``, computed in a
    child process with ``threads`` torch threads (CPU only). With ``compile_step`` the child
    runs the decoding step through ``torch.compile`` (compiled at its first decode). Calls
    from several threads take turns; an error in the child is raised here (a
    :class:`FreshsidError` as one, anything else as a ``RuntimeError`` with its traceback)."""

    def __init__(self, recommender: Recommender, *, threads: int, compile_step: bool = False) -> None:
        if current().device.type != "cpu":
            raise FreshsidError(f"A decode process decodes on the CPU, not on {current().device}; serve with the "
                                "thread decoder there.")
        self._recommender, self._threads, self._compile = recommender, threads, compile_step
        self._lock = threading.Lock()
        self._start()

    def __call__(self, histories: np.ndarray, users: np.ndarray, *, top_k: int, beam: int,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if not (self._process.is_alive() and self._close.alive):  # dead, or its pipe closed by an interruption
                self._close()
                self._start()
            try:
                self._conn.send((histories, users, top_k, beam, batch_size))
                ok, value = self._conn.recv()
            except (EOFError, OSError):
                raise RuntimeError(f"The decode process ended (exit code {self._process.exitcode}) during a "
                                   "decode; the next one starts a new process.") from None
            except BaseException:  # interrupted between send and recv: the pipe is out of step
                self._close()
                raise
        if ok:
            return value
        kind, message = value
        raise FreshsidError(message) if kind is None else RuntimeError(f"{kind} in the decode process: {message}")

    def close(self) -> None:
        """End the child now (after the call in it, if any)."""
        with self._lock:
            self._close()
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fork would copy the loop's threads and torch's pools
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._recommender, self._threads, self._compile),
                                        name="freshsid-decode", daemon=True)
        self._process.start()  # also reaps the children of engines collected before
        child.close()
        # collected without close(): the child reads the end of its pipe and ends by itself
        self._close = weakref.finalize(self, self._conn.close)


def _serve(conn: Connection, recommender: Recommender, threads: int, compile_step: bool) -> None:
    """The child: decode what comes through ``conn`` until it closes."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, whose exit ends this process
    torch.set_num_threads(threads)
    repeatable()
    if compile_step:
        recommender.model.compile_step()
    while True:
        try:
            histories, users, top_k, beam, batch_size = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = (True, recommender(histories, users, top_k=top_k, beam=beam, batch_size=batch_size))
        except FreshsidError as exc:
            answer = (False, (None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - told to the parent, which raises it
            answer = (False, (type(exc).__name__, traceback.format_exc()))
        try:
            conn.send(answer)
        except OSError:
            return
