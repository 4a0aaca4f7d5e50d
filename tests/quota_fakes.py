"""Quota test helpers: a clock moved by hand, a ledger wrapper that counts, fails or stalls calls, gate helpers."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from serve_app.tenancy.ledger import QuotaLedger
from serve_app.tenancy.limiter import Admission, KeyLimits, QuotaGate


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs an async test in a fresh event loop (the project has no pytest-asyncio)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


async def drain() -> None:
    """Lets the gate's background tasks (give-backs, debt charges) run to the end."""
    for _ in range(50):
        await asyncio.sleep(0)


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ProbedLedger:
    """Passes every call to `ledger`, counting them; `failing` makes calls raise, `stalled` makes them hang."""

    ledger: QuotaLedger
    calls: Counter[str] = field(default_factory=Counter)
    failing: bool = False
    stalled: set[str] = field(default_factory=set)

    async def lease(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("lease", *args, **kwargs)

    async def give_back(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("give_back", *args, **kwargs)

    async def charge(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("charge", *args, **kwargs)

    async def renew(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("renew", *args, **kwargs)

    async def _pass(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls[method] += 1
        if self.failing:
            raise ConnectionError("ledger replica is restarting")
        if method in self.stalled or (args and str(args[1]) in self.stalled):
            await asyncio.Event().wait()
        return await getattr(self.ledger, method)(*args, **kwargs)


def gate_on(ledger: QuotaLedger | ProbedLedger, limits: dict[str, KeyLimits], clock: FakeClock,
            **options: Any) -> QuotaGate:
    # Sweeps are driven by the tests, with the fake clock: the background one is pushed out of the way.
    return QuotaGate(limits, ledger, clock=clock, sweep_every_s=3600, **options)


async def admit_until_refused(gate: QuotaGate, key: str, tokens: int = 1, most: int = 10_000) -> list[Admission]:
    admitted = []
    for _ in range(most):
        admission = await gate.admit(key, tokens)
        if not admission.admitted:
            break
        admitted.append(admission)
    return admitted
