"""Benchmark: the quota gate's cost per request (admit + finish), with and without trips to the ledger."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from serve_app.tenancy.limiter import KeyLimits, QuotaGate, QuotaLedger

PROMPT_TOKENS = 100
TOTAL_TOKENS = 150
# Large enough that no case is ever refused: only the gate's own work is measured.
ROOMY = KeyLimits(rpm=10**9, tpm=10**12, max_concurrent=10**6)


@dataclass(frozen=True)
class Case:
    name: str
    limits: KeyLimits | None  # None: a key without limits
    lease_share: float  # of the limit, for all replicas' leases together: sets how often the ledger is asked


@dataclass(frozen=True)
class Result:
    case: Case
    micros: list[float]
    seconds: float
    ledger_calls: int

    def line(self) -> str:
        p50 = statistics.median(self.micros)
        p99 = statistics.quantiles(self.micros, n=100)[98]
        count = len(self.micros)
        return (f"{self.case.name:<42} p50 {p50:6.2f} us   p99 {p99:6.2f} us   {count / self.seconds:>9,.0f} req/s"
                f"   ledger calls/request {self.ledger_calls / count:.3f}")


class CountingLedger:
    """The in-process ledger, counting the calls the gate makes to it."""

    def __init__(self, ledger: QuotaLedger) -> None:
        self.ledger = ledger
        self.calls = 0

    async def lease(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.ledger.lease(*args, **kwargs)

    async def give_back(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.ledger.give_back(*args, **kwargs)

    async def charge(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.ledger.charge(*args, **kwargs)

    async def renew(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.ledger.renew(*args, **kwargs)


CASES = [
    Case("unlimited key (no limits)", None, 0.1),
    Case("limited key, from the local lease", ROOMY, 0.1),
    # 10**9 requests a minute, one at a time: a share of 1e-8 makes a lease of 10 requests.
    Case("limited key, ledger every 10 requests", ROOMY, 1e-8),
    # A lease of 1 request and 1 token: each request leases both (its 100-token prompt in one call).
    Case("limited key, ledger on every request", ROOMY, 1e-12),
]


async def measure(case: Case, requests: int, warmup: int) -> Result:
    limits: dict[str, KeyLimits] = {"bench": case.limits} if case.limits else {}
    ledger = CountingLedger(QuotaLedger(limits))
    gate = QuotaGate(limits, ledger, lease_share=case.lease_share)
    await run_requests(gate, warmup)
    calls_before = ledger.calls
    started = time.perf_counter()
    micros = await run_requests(gate, requests)
    seconds = time.perf_counter() - started
    await gate.close()
    return Result(case, micros, seconds, ledger.calls - calls_before)


async def run_requests(gate: QuotaGate, count: int) -> list[float]:
    micros = []
    clock = time.perf_counter_ns
    for _ in range(count):
        began = clock()
        admission = await gate.admit("bench", PROMPT_TOKENS)
        admission.finish(TOTAL_TOKENS)
        micros.append((clock() - began) / 1000)
        if not admission.admitted:
            raise RuntimeError(f"the benchmark key was refused ({admission.limit}): its limits are too small")
    return micros


def main(
    requests: Annotated[int, typer.Option(help="Measured requests per case.")] = 50_000,
    warmup: Annotated[int, typer.Option(help="Requests per case before measuring.")] = 5_000,
) -> None:
    """Time admit + finish per request, one request at a time, against an in-process ledger."""
    results: list[Any] = [asyncio.run(measure(case, requests, warmup)) for case in CASES]
    print(f"quota gate overhead per request (admit + finish), {requests:,} requests per case, in-process ledger")
    for result in results:
        print(result.line())
    print("A ledger behind a Serve handle adds its round trip (about a millisecond) to each ledger call.")


if __name__ == "__main__":
    typer.run(main)
