"""Admission control: a bound on the requests one router replica lets wait for a replica of a model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# A busy model frees a slot within seconds; a model scaling from zero needs about a minute (engine start).
BUSY_RETRY_AFTER_S = 2
COLD_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Refusal:
    """The answer to a request past the bound: 429 when replicas are busy, 503 when the model is cold."""

    status: int
    retry_after_s: int
    message: str


class ModelQueue:
    """Counts one model's requests in this router replica: those waiting for a replica, and those being served.

    A request waits from the moment it is handed to Serve until a replica takes it (the `Accepted` item). The
    bound is per router replica: with R router replicas a model has at most R x bound requests waiting."""

    def __init__(self, model: str, bound: int, scales_to_zero: bool, idle_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model, self._bound, self._clock = model, bound, clock
        self._scales_to_zero, self._idle_after_s = scales_to_zero, idle_after_s
        self.waiting = 0
        self.serving = 0
        self._last_taken: float | None = None

    def refusal(self) -> Refusal | None:
        """None when one more request may wait; otherwise how to refuse it, at once."""
        if self.waiting < self._bound:
            return None
        if self._cold():
            return Refusal(503, COLD_RETRY_AFTER_S, f"model {self._model!r} is starting from zero replicas and "
                                                    f"{self.waiting} requests already wait for it; retry later")
        return Refusal(429, BUSY_RETRY_AFTER_S, f"model {self._model!r} is busy: {self.waiting} requests already "
                                                f"wait for a replica; retry shortly")

    def enter(self) -> QueueTicket:
        self.waiting += 1
        return QueueTicket(self)

    def _cold(self) -> bool:
        # Only a model that may scale to zero can be cold; it is cold when nothing was taken for a while.
        if not self._scales_to_zero or self.serving:
            return False
        return self._last_taken is None or self._clock() - self._last_taken > self._idle_after_s

    def _taken(self) -> None:
        self.waiting -= 1
        self.serving += 1
        self._last_taken = self._clock()


class QueueTicket:
    """One request's place: waiting, then served, then gone. `close` is safe to call more than once."""

    def __init__(self, queue: ModelQueue) -> None:
        self._queue = queue
        self._state = "waiting"

    def taken(self) -> None:
        if self._state == "waiting":
            self._queue._taken()
            self._state = "serving"

    def close(self) -> None:
        if self._state == "waiting":
            self._queue.waiting -= 1
        elif self._state == "serving":
            self._queue.serving -= 1
        self._state = "closed"
