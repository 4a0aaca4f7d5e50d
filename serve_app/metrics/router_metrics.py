"""The router's own metrics: requests, latencies and tokens per model and key, queue depths, retries, failovers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from serve_app.metrics.families import Family, exposition, families_of
from serve_app.metrics.observation import ModelSeries, RequestObservation

PREFIX = "llmcluster_"
# The key label of requests on an open API (no keys configured).
NO_KEY = "-"
# Seconds; generation takes from well under a second to minutes, a first token from milliseconds to a cold queue.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5)


class QueueDepth(NamedTuple):
    """One model's requests in this router replica: waiting for a replica, and being answered by one."""

    model: str
    queued: int
    in_flight: int


QueueSource = Callable[[], Iterable[QueueDepth]]


def catalog_queues(routes: Iterable[Any]) -> QueueSource:
    """Queue depths read from the routes' admission queues (serve_app.admission.ModelQueue) at scrape time."""
    routes = list(routes)
    return lambda: [QueueDepth(route.name, route.queue.waiting, route.queue.serving) for route in routes]


class RouterMetrics:
    """One per router replica, owning its registry. `request()` starts the observation of one request;
    `exposition()` is what GET /metrics answers: these metrics, plus the rest of the cluster's through `hub`."""

    def __init__(self, queues: QueueSource = lambda: (), *, registry: CollectorRegistry | None = None,
                 replica: str = "0", hub: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.replica = replica
        self._hub = hub  # a serve_app.metrics.hub_link.HubLink, or None: then /metrics shows this replica only
        self._clock = clock
        r = self.registry
        self._requests = Counter(f"{PREFIX}requests", "Requests that named a served model, by final HTTP status "
                                 "(499: the client went away first).", ["model", "key", "status"], registry=r)
        self._duration = Histogram(f"{PREFIX}request_duration_seconds", "From admission to the reply's last "
                                   "byte, for requests handed to a model.", ["model"], registry=r,
                                   buckets=DURATION_BUCKETS)
        self._first_token = Histogram(f"{PREFIX}time_to_first_token_seconds", "From admission to the first "
                                      "streamed chunk.", ["model"], registry=r, buckets=FIRST_TOKEN_BUCKETS)
        self._inter_token = Histogram(f"{PREFIX}inter_token_latency_seconds", "Between consecutive streamed "
                                      "chunks of a reply.", ["model"], registry=r, buckets=INTER_TOKEN_BUCKETS)
        self._prompt_tokens = Counter(f"{PREFIX}prompt_tokens", "Prompt tokens of answered requests.",
                                      ["model", "key"], registry=r)
        self._completion_tokens = Counter(f"{PREFIX}completion_tokens", "Completion tokens of answered requests.",
                                          ["model", "key"], registry=r)
        self._retries = Counter(f"{PREFIX}retries", "Requests sent again to another replica before any reply.",
                                ["model"], registry=r)
        self._failovers = Counter(f"{PREFIX}failovers", "Streams moved to another replica after a replica "
                                  "failed mid-reply.", ["model"], registry=r)
        r.register(_QueueCollector(queues))
        self._series: dict[tuple[str, str], ModelSeries] = {}

    def request(self, model: str, key: str | None) -> RequestObservation:
        """Starts timing one request to `model` (its configured name) by the tenant named `key`
        (Tenant.name, never the key itself; None on an open API)."""
        key = key or NO_KEY
        series = self._series.get((model, key))
        if series is None:
            series = self._series[(model, key)] = self._new_series(model, key)
        return RequestObservation(series, self._clock)

    def families(self) -> list[Family]:
        """This replica's metrics, labelled with its replica id."""
        return families_of(self.registry, labels={"replica": self.replica})

    async def exposition(self) -> bytes:
        """The text of GET /metrics: this replica's metrics, live, and the hub's view of the rest."""
        others = await self._hub.gather() if self._hub is not None else []
        return exposition([*self.families(), *others])

    @asynccontextmanager
    async def lifespan(self, _: Any = None) -> AsyncIterator[None]:
        """The router app's lifespan: sends this replica's metrics to the hub while the app runs."""
        if self._hub is not None:
            self._hub.start(self.families)
        try:
            yield
        finally:
            if self._hub is not None:
                await self._hub.stop()

    def _new_series(self, model: str, key: str) -> ModelSeries:
        # Label lookups happen once per (model, key), not per request: the request path only observes.
        requests = self._requests
        return ModelSeries(
            count=lambda status: requests.labels(model, key, str(status)).inc(),
            duration=self._duration.labels(model), first_token=self._first_token.labels(model),
            inter_token=self._inter_token.labels(model), prompt_tokens=self._prompt_tokens.labels(model, key),
            completion_tokens=self._completion_tokens.labels(model, key), retries=self._retries.labels(model),
            failovers=self._failovers.labels(model))


class _QueueCollector:
    """In-flight and queued requests, read from the admission queues when scraped: nothing on the request path."""

    def __init__(self, queues: QueueSource) -> None:
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(f"{PREFIX}requests_queued", "Requests waiting for a replica of the model to "
                                   "take them.", labels=["model"])
        in_flight = GaugeMetricFamily(f"{PREFIX}requests_in_flight", "Requests a replica of the model has "
                                      "taken and not finished answering.", labels=["model"])
        for depth in self._queues():
            queued.add_metric([depth.model], depth.queued)
            in_flight.add_metric([depth.model], depth.in_flight)
        yield queued
        yield in_flight

    def describe(self) -> list[Metric]:
        return []
