"""What the service tells Prometheus: requests, latency, batching, releases, staleness.

One :class:`ServiceMetrics` per service, on its own registry (so two services in one
process, as in the tests, do not share counts). Seconds are the unit of time. Beside
the request counts and latencies, the batcher's figures say where a request's time goes
(waiting for company, decoding), and two staleness signals are read from the traffic
itself, no labels needed: the share of recent requests whose history holds items the
release cannot code, and recommended items counted by how long they have been known.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DAY = 86_400
AGE_BUCKETS = ((1, "1d"), (7, "7d"), (30, "30d"), (90, "90d"), (365, "365d"))  # (days, label): age at most that
STALENESS_WINDOW = 1_000  # requests behind the uncoded-history share
RELOAD_OUTCOMES = ("swapped", "refused", "error")


def item_age_labels(first_seen: np.ndarray, until_time: int) -> list[str]:
    """The age bucket label of each item: time from its first event to the release's last."""
    days = (until_time - np.asarray(first_seen, dtype=np.int64)) / DAY
    bounds = np.array([b for b, _ in AGE_BUCKETS])
    labels = [label for _, label in AGE_BUCKETS] + ["older"]
    return [labels[i] for i in np.searchsorted(bounds, days, side="left")]


class ServiceMetrics:
    """Every series of ``/metrics``; :meth:`text` renders them in the Prometheus format."""

    def __init__(self, root: Path) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("freshsid_requests", "POST /recommend requests answered, by status and by the release "
                                "in service.", ["status", "release"], registry=registry)
        self.latency = Histogram("freshsid_request_duration_seconds", "Time to answer POST /recommend, from the request "
                                 "to its response.", buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("freshsid_batch_size", "Requests decoded together in one beam search.",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_wait = Histogram("freshsid_queue_wait_seconds", "Time a request waited for its batch to start "
                                    "decoding.", buckets=LATENCY_BUCKETS, registry=registry)
        self.decode = Histogram("freshsid_decode_seconds", "Time one batch spent decoding, on the decoding thread.",
                                buckets=LATENCY_BUCKETS, registry=registry)
        self.handoff = Histogram("freshsid_decode_handoff_seconds", "Time one batch spent going to the decoding "
                                 "thread and its results back to the event loop, beyond the decode itself.",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.reloads = Counter("freshsid_reloads", "Checks of the current release: swapped in, refused (a release that "
                               "does not load, a pointer that is not one) or failed (an error of the check itself).",
                               ["outcome"], registry=registry)
        for outcome in RELOAD_OUTCOMES:  # at 0 from the start, so that increase() sees the first one
            self.reloads.labels(outcome)
        self.release = Gauge("freshsid_release_info", "The release in service (value 1).", ["release"],
                             registry=registry)
        self.release_created = Gauge("freshsid_release_created_timestamp_seconds", "When the release in service was "
                                     "written.", registry=registry)
        self.release_until = Gauge("freshsid_release_data_until_timestamp_seconds", "The time of the last event the "
                                   "release in service has seen.", registry=registry)
        self.uncoded_requests = Counter("freshsid_requests_uncoded_history", "Requests whose history holds items the "
                                        "release cannot code.", registry=registry)
        self.uncoded_share = Gauge("freshsid_uncoded_history_share", f"Share of the last {STALENESS_WINDOW} requests "
                                   "whose history holds items the release cannot code.", registry=registry)
        self.recommended = Counter("freshsid_recommended_items", "Items recommended, by the time from their first event "
                                   "to the release's last (at most 1d, 7d, ... or older).", ["age"], registry=registry)
        Gauge("freshsid_release_age_seconds", "Seconds since the release in service was written.",
              registry=registry).set_function(lambda: time.time() - self._created)
        registry.register(_LastRefresh(root))
        self._recent: deque[bool] = deque(maxlen=STALENESS_WINDOW)
        self._created = time.time()

    def serving(self, release_id: str, created: float, until_time: int | None) -> None:
        self.release.clear()
        self.release.labels(release_id).set(1)
        for status in ("200", "500"):  # at 0 from the start: the error alerts read the rate of 5xx
            self.requests.labels(status, release_id)
        self.release_created.set(created)
        self._created = created
        self.release_until.set(until_time or 0)

    def observe_history(self, uncoded: bool) -> None:
        self._recent.append(uncoded)
        if uncoded:
            self.uncoded_requests.inc()
        self.uncoded_share.set(sum(self._recent) / len(self._recent))

    def observe_items(self, ages: list[str]) -> None:
        for age, n in zip(*np.unique(ages, return_counts=True), strict=True):
            self.recommended.labels(str(age)).inc(int(n))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _LastRefresh:
    """The outcome of the last ``freshsid refresh`` of the releases root, read at each scrape
    from the line it leaves (:data:`freshsid.serve.ops.LAST_REFRESH`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        from freshsid.serve.ops import STATES, last_refresh
        from freshsid.serve.release import Releases

        outcome = GaugeMetricFamily("freshsid_last_refresh_outcome", "The last refresh of the releases root: 1 for its "
                                    "outcome (running while one runs; interrupted: killed), 0 for the others.",
                                    labels=["outcome"])
        when = GaugeMetricFamily("freshsid_last_refresh_timestamp_seconds", "When the last refresh of the releases root "
                                 "finished, or started while one runs (0: none recorded).")
        last = last_refresh(Releases(self.root)) or {}
        for name in STATES:
            outcome.add_metric([name], 1.0 if last.get("outcome") == name else 0.0)
        when.add_metric([], float(last.get("time", 0)))
        yield outcome
        yield when
