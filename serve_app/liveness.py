"""Telling a hung engine from a busy one: requests in flight, yet no engine step finished for too long."""

from __future__ import annotations

import time
from collections.abc import Callable


class EngineStalled(RuntimeError):
    """Raised by a health check when the engine is hung: Serve then replaces the replica."""


class StallWatch:
    """Remembers when the engine last made progress; `check` fails once it has been busy without any.

    vLLM's engine core reports every step it finishes, with or without finished tokens (a chunk of a long
    prefill counts), so a working engine with requests in flight reports many times a second. Idle engines
    report nothing: a check that finds no request in flight restarts the clock, so an engine that sat idle for
    an hour is not taken for hung the moment a request arrives. A request that arrived since the last check
    is thus measured from that check, at most one check period early: keep `stall_after_s` well above it."""

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_after_s = stall_after_s
        self._clock = clock
        self._since = clock()

    def stepped(self) -> None:
        """The engine finished a step; called from vLLM's output loop, so it must stay this cheap."""
        self._since = self._clock()

    def check(self, in_flight: int) -> None:
        """Raise EngineStalled if `in_flight` requests have seen no engine step for `stall_after_s`."""
        now = self._clock()
        if in_flight == 0:
            self._since = now
            return
        quiet_s = now - self._since
        if quiet_s > self._stall_after_s:
            raise EngineStalled(f"engine hung: {in_flight} request(s) in flight and no engine step for "
                                f"{quiet_s:.0f}s (models[].health.stall_timeout_s is {self._stall_after_s:g}s)")
