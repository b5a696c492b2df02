"""Operational events as one JSON line each: swaps, refusals, refreshes, rollbacks, prunes.

A line is ``{"time": ..., "event": ..., ...}`` on stderr (where systemd's journal or a
log shipper picks it up) through the ``freshsid.events`` logger, so that tests and
embedding code can capture it like any other log record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

log = logging.getLogger("freshsid.events")


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the event."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(record.getMessage() + "\n")
        sys.stderr.flush()


if not log.handlers:
    log.addHandler(_Stderr())
    log.setLevel(logging.INFO)


def record(event: str, **fields: Any) -> dict[str, Any]:
    """Log one event line; returns what it logged."""
    line = {"time": round(time.time(), 3), "event": event, **fields}
    log.info(json.dumps(line, sort_keys=False, default=str))
    return line
