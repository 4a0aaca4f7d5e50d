"""Admission control as pure logic: the bound on waiting requests, and 429 (busy) versus 503 (cold)."""

from __future__ import annotations

from serve_app.admission import ModelQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_wait_up_to_the_bound() -> None:
    queue = ModelQueue("m", bound=2, scales_to_zero=False, idle_after_s=60)
    first, second = queue.enter(), queue.enter()
    refusal = queue.refusal()
    assert refusal and refusal.status == 429 and refusal.retry_after_s >= 1
    first.taken()
    assert queue.refusal() is None and (queue.waiting, queue.serving) == (1, 1)
    second.close()
    first.close()
    assert (queue.waiting, queue.serving) == (0, 0)


def test_a_bound_of_zero_refuses_whenever_nothing_is_free() -> None:
    assert ModelQueue("m", bound=0, scales_to_zero=False, idle_after_s=60).refusal().status == 429


def test_close_is_idempotent_in_every_state() -> None:
    queue = ModelQueue("m", bound=5, scales_to_zero=False, idle_after_s=60)
    waiting, served = queue.enter(), queue.enter()
    served.taken()
    for ticket in (waiting, served, waiting, served):
        ticket.close()
    served.taken()  # a late Accepted after the client left changes nothing
    assert (queue.waiting, queue.serving) == (0, 0)


def test_model_scaling_from_zero_is_503_until_a_replica_takes_requests() -> None:
    clock = Clock()
    queue = ModelQueue("m", bound=1, scales_to_zero=True, idle_after_s=60, clock=clock)
    ticket = queue.enter()
    assert queue.refusal().status == 503
    ticket.taken()
    extra = queue.enter()
    assert queue.refusal().status == 429  # a replica is serving: busy, not cold
    ticket.close()
    clock.now += 30
    assert queue.refusal().status == 429  # took a request 30 s ago: still up
    clock.now += 60
    assert queue.refusal().status == 503  # idle past the downscale delay: probably back at zero
    extra.close()


def test_model_with_fixed_replicas_is_never_cold() -> None:
    queue = ModelQueue("m", bound=0, scales_to_zero=False, idle_after_s=60)
    assert queue.refusal().status == 429
