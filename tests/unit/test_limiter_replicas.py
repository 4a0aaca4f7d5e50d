"""Quota gates of several router replicas sharing one ledger: the cluster-wide limit, idle leases, dead replicas."""

from __future__ import annotations

import asyncio
import random

from serve_app.tenancy.lease_broker import RENEW_EVERY_S
from serve_app.tenancy.ledger import HOLDER_TIMEOUT_S
from serve_app.tenancy.limiter import KeyLimits, QuotaLedger
from tests.quota_fakes import FakeClock, admit_until_refused, gate_on, in_loop


@in_loop
async def test_two_replicas_together_admit_the_limit_and_no_more() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(rpm=10)}
    ledger = QuotaLedger(limits, clock=clock)
    gates = [gate_on(ledger, limits, clock, replicas=2) for _ in range(2)]
    admitted = [(await gates[i % 2].admit("k", 1)).admitted for i in range(40)]
    assert sum(admitted) == 10


@in_loop
async def test_replicas_together_never_exceed_one_bucket_in_any_window() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(rpm=30, max_concurrent=4)}
    ledger = QuotaLedger(limits, clock=clock)
    gates = [gate_on(ledger, limits, clock, replicas=3, lease_share=0.5) for _ in range(3)]
    rng, admitted_at, in_flight = random.Random(7), [], []
    for _ in range(3000):
        clock.advance(rng.choice([0, 0, 0, 0.05, 0.3, 1.5]))
        gate, roll = rng.choice(gates), rng.random()
        if roll < 0.1:
            await gate.sweep()
        elif roll < 0.4 and in_flight:
            in_flight.pop(rng.randrange(len(in_flight))).finish(None)
        elif (admission := await gate.admit("k", 1)).admitted:
            admitted_at.append(clock.now)
            in_flight.append(admission)
        assert len(in_flight) <= 4
        await asyncio.sleep(0)
    assert len(admitted_at) > 200
    for first, start in enumerate(admitted_at):
        for last in range(first, len(admitted_at)):
            # One bucket admits at most its capacity plus its refill (0.5 a second) in any window.
            assert last - first + 1 <= 30 + 0.5 * (admitted_at[last] - start) + 1e-9


@in_loop
async def test_idle_lease_goes_back_after_the_ttl() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(rpm=60)}
    ledger = QuotaLedger(limits, clock=clock)
    hoarder = gate_on(ledger, limits, clock, lease_share=0.5)  # leases 30 at a time
    other = gate_on(ledger, limits, clock, replicas=60)  # leases 1 at a time
    await hoarder.admit("k", 1)
    assert len(await admit_until_refused(other, "k")) == 30
    await hoarder.sweep()
    assert len(await admit_until_refused(other, "k")) == 0  # not idle for the TTL yet: the 29 stay there
    clock.advance(1.0)
    await hoarder.sweep()
    assert len(await admit_until_refused(other, "k")) == 29 + 1  # returned, plus a second of refill


@in_loop
async def test_close_hands_the_lease_back() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(rpm=60)}
    ledger = QuotaLedger(limits, clock=clock)
    closing, other = gate_on(ledger, limits, clock, lease_share=0.5), gate_on(ledger, limits, clock, replicas=60)
    await closing.admit("k", 1)
    await admit_until_refused(other, "k")
    await closing.close()
    assert len(await admit_until_refused(other, "k")) == 29


@in_loop
async def test_released_slots_stay_with_a_replica_for_the_ttl() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(max_concurrent=2)}
    ledger = QuotaLedger(limits, clock=clock)
    first, second = (gate_on(ledger, limits, clock, replicas=2) for _ in range(2))
    (await first.admit("k", 1)).finish(None)
    assert (await second.admit("k", 1)).admitted
    assert not (await second.admit("k", 1)).admitted  # the other slot rests with the first replica
    clock.advance(1.0)
    await first.sweep()
    assert (await second.admit("k", 1)).admitted


@in_loop
async def test_slots_of_a_replica_in_flight_stay_counted_while_it_renews() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(max_concurrent=1)}
    ledger = QuotaLedger(limits, clock=clock)
    alive, other = gate_on(ledger, limits, clock), gate_on(ledger, limits, clock)
    await alive.admit("k", 1)  # a long stream
    for _ in range(int(2 * HOLDER_TIMEOUT_S / RENEW_EVERY_S)):
        clock.advance(RENEW_EVERY_S)
        await alive.sweep()
    assert not (await other.admit("k", 1)).admitted


@in_loop
async def test_slots_of_a_dead_replica_come_back() -> None:
    clock, limits = FakeClock(), {"k": KeyLimits(max_concurrent=1)}
    ledger = QuotaLedger(limits, clock=clock)
    dead, other = gate_on(ledger, limits, clock), gate_on(ledger, limits, clock)
    await dead.admit("k", 1)
    clock.advance(HOLDER_TIMEOUT_S + 1)
    assert (await other.admit("k", 1)).admitted
