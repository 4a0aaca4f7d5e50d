"""The per-replica quota gate against an in-process ledger: bursts, refill, leases, tokens, slots, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.tenancy.lease_broker import LEDGER_RETRY_S
from serve_app.tenancy.limiter import KeyLimits, QuotaGate, QuotaLedger, usage_tokens
from tests.quota_fakes import FakeClock, ProbedLedger, admit_until_refused, drain, gate_on, in_loop


def single_gate(limits: dict[str, KeyLimits], **options: Any) -> tuple[QuotaGate, ProbedLedger, FakeClock]:
    clock = FakeClock()
    probe = ProbedLedger(QuotaLedger(limits, clock=clock))
    return gate_on(probe, limits, clock, **options), probe, clock


@in_loop
async def test_unknown_key_and_key_without_limits_cost_nothing() -> None:
    gate, probe, _ = single_gate({"free": KeyLimits(), "paid": KeyLimits(rpm=1)})
    for key in ("nobody", "free"):
        admission = await gate.admit(key, 10**9)
        assert admission.admitted and admission.headers == {} and admission.limit is None
        admission.finish(10**9)
    assert sum(probe.calls.values()) == 0


@in_loop
async def test_burst_up_to_capacity_then_429_with_retry_after() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(rpm=6)})
    assert len(await admit_until_refused(gate, "k")) == 6
    refused = await gate.admit("k", 1)
    # 6 a minute refill one every 10 s.
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "requests", 10)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"


@in_loop
async def test_refill_over_time_never_past_capacity() -> None:
    gate, _, clock = single_gate({"k": KeyLimits(rpm=6)})
    await admit_until_refused(gate, "k")
    clock.advance(10)
    assert len(await admit_until_refused(gate, "k")) == 1
    clock.advance(3600)
    assert len(await admit_until_refused(gate, "k")) == 6


@in_loop
async def test_rate_limit_headers_as_openai_writes_them() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(rpm=60, tpm=6000)})
    admission = await gate.admit("k", 10)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5990",
        "x-ratelimit-reset-tokens": "100ms",
    }


@in_loop
async def test_headers_only_for_the_limits_the_key_has() -> None:
    gate, _, _ = single_gate({"slots": KeyLimits(max_concurrent=2), "rpm": KeyLimits(rpm=5)})
    assert (await gate.admit("slots", 1)).headers == {}
    assert set((await gate.admit("rpm", 1)).headers) == {
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}


@in_loop
async def test_requests_come_from_the_local_lease_without_ledger_calls() -> None:
    gate, probe, _ = single_gate({"k": KeyLimits(rpm=6000, tpm=10**7, max_concurrent=1000)})
    for _ in range(600):
        (await gate.admit("k", 100)).finish(150)
    await drain()
    # One lease each: 600 requests, 10**6 tokens (more than 600 x 150), 100 slots (one in use at a time).
    assert probe.calls == {"lease": 3}


@in_loop
async def test_slots_freed_after_a_burst_go_back_in_one_call() -> None:
    gate, probe, _ = single_gate({"k": KeyLimits(max_concurrent=1000)})
    burst = [await gate.admit("k", 1) for _ in range(600)]
    for admission in burst:
        admission.finish(None)
    await drain()
    assert probe.calls == {"lease": 6, "give_back": 1}  # leases of 100; then all but 100 back at once
    assert len(await admit_until_refused(gate, "k", most=2000)) == 1000


@in_loop
async def test_concurrency_slot_freed_by_finish_on_every_path() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(max_concurrent=2)})
    first, second = await gate.admit("k", 1), await gate.admit("k", 1)
    refused = await gate.admit("k", 1)
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "concurrent", 1)
    first.finish(None)  # engine error or client disconnect: no usage
    third = await gate.admit("k", 1)
    assert third.admitted
    second.finish(42)
    third.finish(None)
    assert len(await admit_until_refused(gate, "k")) == 2


@in_loop
async def test_finish_is_idempotent() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(tpm=1000, max_concurrent=1)})
    admission = await gate.admit("k", 100)
    for _ in range(3):
        admission.finish(10)  # a refund of 90, counted once
    assert (await gate.admit("k", 100)).headers["x-ratelimit-remaining-tokens"] == str(1000 - 10 - 100)
    assert not (await gate.admit("k", 1)).admitted  # the second finish did not free a second slot


@in_loop
async def test_streamed_usage_is_settled_on_finish() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(tpm=1000)})
    admission = await gate.admit("k", 100)
    assert admission.headers["x-ratelimit-remaining-tokens"] == "900"
    # The usage of a stream's last chunk, as the router reads it.
    admission.finish(usage_tokens({"prompt_tokens": 100, "completion_tokens": 300, "total_tokens": 400}))
    await drain()
    assert (await gate.admit("k", 100)).headers["x-ratelimit-remaining-tokens"] == str(1000 - 400 - 100)


@in_loop
async def test_no_usage_settles_with_the_estimate() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(tpm=1000)})
    (await gate.admit("k", 100)).finish(None)
    assert (await gate.admit("k", 100)).headers["x-ratelimit-remaining-tokens"] == "800"


@in_loop
async def test_refund_after_the_spend_was_reported_goes_back_to_the_ledger() -> None:
    gate, _, clock = single_gate({"k": KeyLimits(tpm=1000)})
    big = await gate.admit("k", 500)
    clock.advance(1.0)
    await gate.sweep()  # the ledger hears the 500 were spent
    big.finish(100)
    await drain()
    headers = (await gate.admit("k", 1)).headers
    # 1000 - 500 + 400 refunded; the second of refill is lost while the spend was unreported (under-admission).
    assert int(headers["x-ratelimit-remaining-tokens"]) == 1000 - 100 - 1


@in_loop
async def test_token_debt_delays_later_requests() -> None:
    gate, _, clock = single_gate({"k": KeyLimits(tpm=600)})
    admission = await gate.admit("k", 600)
    admission.finish(1200)
    await drain()
    refused = await gate.admit("k", 10)
    # 600 in debt, 10 more needed, at 10 tokens a second.
    assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "tokens", 61)
    clock.advance(60)
    assert not (await gate.admit("k", 10)).admitted
    clock.advance(1)
    assert (await gate.admit("k", 10)).admitted


@in_loop
async def test_prompt_larger_than_the_bucket_waits_for_a_full_bucket_then_owes_the_rest() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(tpm=60)})
    assert (await gate.admit("k", 90)).admitted
    await drain()
    refused = await gate.admit("k", 1)
    assert refused.retry_after_s == 31  # 30 owed plus the one asked for, at one a second


@in_loop
async def test_request_refused_on_one_limit_takes_nothing_from_the_others() -> None:
    gate, _, _ = single_gate({"k": KeyLimits(rpm=60, tpm=600, max_concurrent=1)})
    first = await gate.admit("k", 10)
    assert (await gate.admit("k", 10)).limit == "concurrent"
    first.finish(None)
    headers = (await gate.admit("k", 10)).headers
    assert headers["x-ratelimit-remaining-requests"] == "58"
    assert headers["x-ratelimit-remaining-tokens"] == "580"


@in_loop
async def test_unreachable_ledger_fails_open_then_enforces_again() -> None:
    gate, probe, clock = single_gate({"k": KeyLimits(rpm=1, max_concurrent=1)})
    probe.failing = True
    assert all([(await gate.admit("k", 1)).admitted for _ in range(5)])
    assert probe.calls["lease"] == 1  # left alone after one failure, not one timeout per request
    probe.failing = False
    clock.advance(LEDGER_RETRY_S)
    assert (await gate.admit("k", 1)).admitted
    assert (await gate.admit("k", 1)).limit in {"requests", "concurrent"}


@in_loop
async def test_hung_ledger_times_out_and_fails_open() -> None:
    gate, probe, _ = single_gate({"k": KeyLimits(rpm=1)}, ledger_timeout_s=0.05)
    probe.stalled.add("lease")
    admission = await asyncio.wait_for(gate.admit("k", 1), timeout=5)
    assert admission.admitted


@in_loop
async def test_background_failures_are_logged_not_raised() -> None:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    gate, probe, _ = single_gate({"k": KeyLimits(tpm=100, max_concurrent=50)})
    admissions = [await gate.admit("k", 1) for _ in range(40)]
    probe.failing = True
    for admission in admissions:
        admission.finish(500)  # debts to send and surplus slots to give back, all failing
    await drain()
    assert (await gate.admit("k", 1)).admitted
    assert errors == []


@in_loop
async def test_cancelled_admission_gives_back_what_it_took() -> None:
    gate, probe, _ = single_gate({"k": KeyLimits(rpm=60, max_concurrent=5)})
    probe.stalled.add("concurrent")
    waiting = asyncio.ensure_future(gate.admit("k", 1))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    probe.stalled.clear()
    assert (await gate.admit("k", 1)).headers["x-ratelimit-remaining-requests"] == "59"
