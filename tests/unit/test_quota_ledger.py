"""The quota ledger's buckets: lending, returning, refill under leases, debt, dead holders, and its Serve client."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.tenancy.ledger import HOLDER_TIMEOUT_S, Grant, QuotaLedger, ServeLedgerClient
from serve_app.tenancy.limits import Dimension, KeyLimits
from tests.quota_fakes import FakeClock, in_loop

REQUESTS, TOKENS, SLOTS = Dimension.REQUESTS, Dimension.TOKENS, Dimension.CONCURRENT


def ledger_of(**limits: Any) -> tuple[QuotaLedger, FakeClock]:
    clock = FakeClock()
    return QuotaLedger({"k": KeyLimits(**limits)}, clock=clock), clock


@in_loop
async def test_lends_what_it_holds_and_refuses_below_the_need() -> None:
    ledger, _ = ledger_of(rpm=60)
    assert (await ledger.lease("k", REQUESTS, holder="a", want=50, need=1, holding=0)).granted == 50
    partial = await ledger.lease("k", REQUESTS, holder="b", want=50, need=1, holding=0)
    assert (partial.granted, partial.level) == (10, 0.0)
    refused = await ledger.lease("k", REQUESTS, holder="b", want=5, need=3, holding=0)
    assert refused == Grant(granted=0, level=0.0, wait_s=3.0)  # one a second


@in_loop
async def test_lent_units_hold_down_the_refill_until_returned() -> None:
    ledger, clock = ledger_of(rpm=60)
    await ledger.lease("k", REQUESTS, holder="a", want=60, need=1, holding=0)
    clock.advance(25)
    # Refill cannot mint units while all 60 are out on lease.
    assert (await ledger.lease("k", REQUESTS, holder="b", want=60, need=1, holding=0)).granted == 0
    assert await ledger.give_back("k", REQUESTS, holder="a", units=20, holding=0) == 20.0
    assert (await ledger.lease("k", REQUESTS, holder="b", want=60, need=1, holding=0)).granted == 20


@in_loop
async def test_spent_units_reported_by_holding_refill_afterwards() -> None:
    ledger, clock = ledger_of(rpm=60)
    await ledger.lease("k", REQUESTS, holder="a", want=60, need=1, holding=0)
    await ledger.renew(holder="a")
    grant = await ledger.lease("k", REQUESTS, holder="a", want=10, need=1, holding=0)  # all 60 spent
    assert grant.granted == 0
    clock.advance(10)
    assert (await ledger.lease("k", REQUESTS, holder="a", want=60, need=1, holding=0)).granted == 10


@in_loop
async def test_a_report_never_raises_what_a_holder_is_counted_for() -> None:
    ledger, _ = ledger_of(max_concurrent=4)
    await ledger.lease("k", SLOTS, holder="a", want=2, need=1, holding=0)
    # A stale or forged report of more slots than were lent changes nothing.
    await ledger.give_back("k", SLOTS, holder="a", units=0, holding=50)
    assert (await ledger.lease("k", SLOTS, holder="b", want=4, need=1, holding=0)).granted == 2
    # Returning more than was lent returns only what was lent.
    await ledger.give_back("k", SLOTS, holder="a", units=9, holding=0)
    assert (await ledger.lease("k", SLOTS, holder="c", want=4, need=1, holding=0)).granted == 2


@in_loop
async def test_slots_a_holder_no_longer_reports_are_free_again() -> None:
    ledger, _ = ledger_of(max_concurrent=2)
    await ledger.lease("k", SLOTS, holder="a", want=2, need=1, holding=0)
    # Its give-back was lost; its next report says it holds one: the other is free, not spent.
    await ledger.lease("k", SLOTS, holder="a", want=1, need=1, holding=0)
    assert (await ledger.lease("k", SLOTS, holder="b", want=2, need=1, holding=0)).granted == 1


@in_loop
async def test_slot_refusal_suggests_a_short_retry() -> None:
    ledger, _ = ledger_of(max_concurrent=1)
    await ledger.lease("k", SLOTS, holder="a", want=1, need=1, holding=0)
    assert (await ledger.lease("k", SLOTS, holder="b", want=1, need=1, holding=0)).wait_s == 1.0


@in_loop
async def test_debt_goes_below_zero_and_refunds_stop_at_the_room() -> None:
    ledger, clock = ledger_of(tpm=600)
    assert await ledger.charge("k", TOKENS, units=900) == -300.0
    clock.advance(30)
    assert await ledger.charge("k", TOKENS, units=0) == 0.0  # ten a second pays it off
    clock.advance(60)
    await ledger.lease("k", TOKENS, holder="a", want=100, need=1, holding=0)
    assert await ledger.charge("k", TOKENS, units=-10_000) == 500.0  # not past what is not on lease


@in_loop
async def test_dead_holder_is_forgotten_and_a_live_one_is_not() -> None:
    ledger, clock = ledger_of(max_concurrent=2, rpm=60)
    await ledger.lease("k", SLOTS, holder="dead", want=1, need=1, holding=0)
    await ledger.lease("k", SLOTS, holder="live", want=1, need=1, holding=0)
    await ledger.lease("k", REQUESTS, holder="dead", want=60, need=1, holding=0)
    clock.advance(HOLDER_TIMEOUT_S - 1)
    await ledger.renew(holder="live")
    clock.advance(2)
    assert (await ledger.lease("k", SLOTS, holder="new", want=2, need=1, holding=0)).granted == 1
    # Its requests count as spent: they come back by refill (from the moment the holder was forgotten).
    assert (await ledger.lease("k", REQUESTS, holder="new", want=60, need=1, holding=0)).granted == 0


@in_loop
async def test_key_without_a_bucket_is_not_limited() -> None:
    ledger, _ = ledger_of(rpm=1)
    assert (await ledger.lease("other", REQUESTS, holder="a", want=7, need=1, holding=0)).granted == 7
    assert (await ledger.lease("k", TOKENS, holder="a", want=7, need=1, holding=0)).granted == 7
    assert await ledger.give_back("other", REQUESTS, holder="a", units=7, holding=0) == 0.0
    assert await ledger.charge("other", TOKENS, units=7) == 0.0


class FakeMethod:
    def __init__(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]], name: str) -> None:
        self._calls, self._name = calls, name

    async def _answer(self) -> str:
        return f"{self._name} answered"

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.append((self._name, args, kwargs))
        return self._answer()


class FakeHandle:
    """`handle.method.remote(...)` returning an awaitable, as a Serve DeploymentHandle does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self.calls, name)


@in_loop
async def test_serve_client_calls_the_deployment_handle() -> None:
    handle = FakeHandle()
    client = ServeLedgerClient(handle)
    assert await client.lease("k", TOKENS, holder="h", want=5, need=2, holding=1) == "lease answered"
    await client.give_back("k", SLOTS, holder="h", units=1, holding=0)
    await client.charge("k", TOKENS, units=-3)
    await client.renew(holder="h")
    assert handle.calls == [
        ("lease", ("k", "tokens"), {"holder": "h", "want": 5, "need": 2, "holding": 1}),
        ("give_back", ("k", "concurrent"), {"holder": "h", "units": 1, "holding": 0}),
        ("charge", ("k", "tokens"), {"units": -3}),
        ("renew", (), {"holder": "h"}),
    ]


@pytest.mark.parametrize("bad", [{"rpm": 0}, {"tpm": -5}, {"max_concurrent": 1.5}])
def test_limits_must_be_positive_whole_numbers(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        KeyLimits(**bad)
