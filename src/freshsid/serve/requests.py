"""What a POST /recommend may be: its fields, its size, how long its client may take.

The bounds come from :class:`~freshsid.serve.config.ServeConfig`. :func:`read_body` and
:func:`parse_request` turn anything else into a :class:`BadRequest` with its HTTP status
and a message: 413 for a body over ``max_body_bytes``, 408 for one slower than
``body_timeout_s``, 400 for what is not JSON (non-finite numbers included) or is nested
deeper than :data:`MAX_DEPTH` (refused before parsing), 422 for a JSON document that is
not a request (``k`` not a positive integer, ``true`` included;
a history over ``max_history`` items; an id over ``max_id_chars``).
:class:`BoundedH11Protocol` cuts off a client slower than ``header_timeout_s`` to send
its request head, which uvicorn itself would wait for forever.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

import h11
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator
from uvicorn.protocols.http.h11_impl import H11Protocol

from freshsid.serve.config import ServeConfig
from freshsid.errors import FreshsidError


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: StrictStr | None = None
    history: list[StrictStr] | None = None
    k: StrictInt = Field(10, ge=1)
    exclude_seen: StrictBool = False

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self


class BadRequest(FreshsidError):
    """A request the service refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _not_finite(text: str) -> None:
    raise BadRequest(400, f"The body holds {text[:20]}, which is not a finite number; send finite numbers.")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        _not_finite(text)
    return value


MAX_DEPTH = 8  # nesting of arrays and objects; a request needs 2
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _check_depth(body: bytes) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH` before parsing it (the parser recurses)."""
    depth = 0
    for byte in _STRING.sub(b"", body).translate(None, delete=_NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            raise BadRequest(400, f"The body nests arrays or objects more than {MAX_DEPTH} deep; send a flat JSON "
                                  "object.")



def parse_request(body: bytes, limits: ServeConfig) -> RecommendRequest:
    """The request in ``body``, or :class:`BadRequest` saying what is wrong with it."""
    _check_depth(body)
    try:
        data = json.loads(body, parse_constant=_not_finite, parse_float=_finite)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(400, f"The body is not JSON ({str(exc)[:80]}); send a JSON object.") from None
    if not isinstance(data, dict):
        raise BadRequest(422, "The body must be a JSON object with user_id or history, k and exclude_seen.")
    try:
        request = RecommendRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(map(str, error["loc"])) or "body"
        raise BadRequest(422, f"{where}: {error['msg']}.") from None
    ids = [request.user_id] if request.user_id is not None else request.history or []
    if request.history is not None and len(request.history) > limits.max_history:
        raise BadRequest(422, f"history has {len(request.history):,} items, more than the {limits.max_history:,} "
                              "accepted; send the latest ones.")
    if any(len(i) > limits.max_id_chars for i in ids):
        raise BadRequest(422, f"An id is longer than {limits.max_id_chars} characters; send the ids of the release.")
    return request


async def read_body(request: Request, limits: ServeConfig) -> bytes:
    """The body, at most ``max_body_bytes``, within ``body_timeout_s``; else :class:`BadRequest`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise BadRequest(413, f"The body is {int(declared):,} bytes, more than the {limits.max_body_bytes:,} accepted.")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise BadRequest(413, f"The body is more than the {limits.max_body_bytes:,} bytes accepted.")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), limits.body_timeout_s)
    except TimeoutError:
        raise BadRequest(408, f"The body took more than {limits.body_timeout_s:g} s to arrive.") from None



class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on request headers: a connection that has
    not sent a whole request head within ``header_timeout_s`` of opening, or of the first
    byte of its next request, is closed (uvicorn itself waits forever). Idle keep-alive
    connections stay under uvicorn's keep-alive timeout."""

    header_timeout_s = ServeConfig().header_timeout_s

    def connection_made(self, transport) -> None:  # noqa: ANN001 - asyncio's signature
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
