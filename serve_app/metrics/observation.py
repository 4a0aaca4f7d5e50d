"""One request's observation: its first token, the gaps between chunks, retries, failovers and how it ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSeries:
    """The metric children of one (model, key): resolved once, so a request only observes and increments."""

    count: Callable[[int], None]  # one request ended with this status
    duration: Any  # prometheus_client children: Histogram or Counter, labelled already
    first_token: Any
    inter_token: Any
    prompt_tokens: Any
    completion_tokens: Any
    retries: Any
    failovers: Any


class RequestObservation:
    """Made by RouterMetrics.request() when a request names a served model.

    Ends with exactly one of `refused` (turned away before reaching a model) or `finished`; later calls of
    either are ignored, so every exit path of the relay may call `finished` without counting a request twice."""

    __slots__ = ("_series", "_clock", "_start", "_last", "_done")

    def __init__(self, series: ModelSeries, clock: Callable[[], float]) -> None:
        self._series, self._clock = series, clock
        self._start = clock()
        self._last: float | None = None
        self._done = False

    def token(self) -> None:
        """One streamed chunk went to the client: the first gives the time to first token, each later one an
        inter-token latency (one clock read, one histogram observation)."""
        now = self._clock()
        if self._last is None:
            self._series.first_token.observe(now - self._start)
        else:
            self._series.inter_token.observe(now - self._last)
        self._last = now

    def retried(self) -> None:
        """The request was sent again, to another replica, before any reply reached the client."""
        self._series.retries.inc()

    def failed_over(self) -> None:
        """A replica failed mid-stream and the stream went on from another."""
        self._series.failovers.inc()

    def refused(self, status: int) -> None:
        """Turned away before any model saw it (limits, queue bound, quota): counted, not timed."""
        if not self._done:
            self._done = True
            self._series.count(status)

    def finished(self, status: int, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        """The reply is over: `status` as the client saw it (503 for a stream that broke, 499 for a client that
        went away), and the tokens it used when known."""
        if self._done:
            return
        self._done = True
        self._series.count(status)
        self._series.duration.observe(self._clock() - self._start)
        if prompt_tokens:
            self._series.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self._series.completion_tokens.inc(completion_tokens)
