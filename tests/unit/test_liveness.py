"""Hang detection: an engine busy without a step for stall_timeout_s fails its health check; busy or idle ones pass."""

from __future__ import annotations

import pytest

from serve_app.liveness import EngineStalled, StallWatch
from tests.quota_fakes import FakeClock


def test_an_idle_engine_is_never_hung() -> None:
    clock = FakeClock()
    watch = StallWatch(30, clock)
    clock.advance(3600)
    watch.check(in_flight=0)


def test_a_busy_engine_that_keeps_stepping_is_healthy() -> None:
    clock = FakeClock()
    watch = StallWatch(30, clock)
    for _ in range(10):
        clock.advance(20)
        watch.stepped()
        watch.check(in_flight=4)


def test_requests_in_flight_without_a_step_for_too_long_is_a_hang() -> None:
    clock = FakeClock()
    watch = StallWatch(30, clock)
    watch.check(in_flight=0)
    clock.advance(29)
    watch.check(in_flight=2)  # not yet
    clock.advance(2)
    with pytest.raises(EngineStalled, match=r"2 request\(s\) in flight and no engine step for 31s"):
        watch.check(in_flight=2)


def test_a_request_after_a_long_idle_time_is_measured_from_the_last_idle_check() -> None:
    clock = FakeClock()
    watch = StallWatch(30, clock)
    clock.advance(3600)  # idle for an hour, no step
    watch.check(in_flight=0)
    clock.advance(10)  # a request arrived, its first step is still running
    watch.check(in_flight=1)


def test_a_step_after_a_stall_heals_the_check() -> None:
    clock = FakeClock()
    watch = StallWatch(5, clock)
    clock.advance(6)
    with pytest.raises(EngineStalled):
        watch.check(in_flight=1)
    watch.stepped()
    watch.check(in_flight=1)
