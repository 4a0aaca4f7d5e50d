"""A router replica's traffic with the quota ledger: fills leases, returns idle units, sends token debts, renews."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from serve_app.tenancy.ledger import HOLDER_TIMEOUT_S, Grant, LedgerClient
from serve_app.tenancy.leases import LocalLease
from serve_app.tenancy.limits import Dimension

logger = logging.getLogger(__name__)

RENEW_EVERY_S = HOLDER_TIMEOUT_S / 6
# A ledger call waits at most this; a request waits on one only when its lease runs dry.
LEDGER_TIMEOUT_S = 1.0
# After a failed call the ledger is left alone this long: requests that need it are admitted at once (fail
# open) instead of each waiting out a timeout while Serve restarts the ledger replica.
LEDGER_RETRY_S = 5.0
_FAILED = object()


class LeaseBroker:
    """Talks to the ledger for one gate; every call is bounded by a timeout, and a failure opens the gate
    (admits without the cluster-wide quota) for LEDGER_RETRY_S rather than failing requests."""

    def __init__(self, ledger: LedgerClient, leases: dict[str, dict[Dimension, LocalLease]], *, holder: str,
                 clock: Callable[[], float], ttl_s: float, timeout_s: float = LEDGER_TIMEOUT_S,
                 sweep_every_s: float | None = None) -> None:
        self._ledger = ledger
        self._leases = leases
        self._holder = holder
        self._clock = clock
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        # Twice per TTL, so an idle unit waits at most 1.5 TTL to go back.
        self._sweep_every_s = sweep_every_s if sweep_every_s is not None else ttl_s / 2
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._down_until = float("-inf")
        self._last_contact = float("-inf")

    async def fill(self, key: str, lease: LocalLease, need: int) -> Grant | None:
        """Asks for enough units that `need` are here; None when the ledger cannot be asked (then: fail open)."""
        if self._down():
            return None
        want, shortfall = lease.want(need)
        holding = lease.holding
        grant = await self._call(self._ledger.lease(key, lease.dimension, holder=self._holder, want=want,
                                                    need=shortfall, holding=holding))
        if grant is _FAILED:
            return None
        lease.granted(grant.granted, holding, grant.level, self._clock())
        self._start_sweeper()
        return grant

    async def give_back(self, key: str, lease: LocalLease, units: int) -> None:
        """Returns `units` of the lease and tells the ledger what this replica still holds."""
        # Under the lease's lock: a give-back overtaking this replica's own lease call could make the ledger
        # forget units that were just lent here.
        async with lease.lock:
            await self._give_back_locked(key, lease, units)

    async def trim(self, key: str, lease: LocalLease) -> None:
        """Returns the free slots past twice a lease, counted when the lock is had; one trim at a time."""
        if lease.trimming:
            return
        lease.trimming = True
        try:
            async with lease.lock:
                await self._give_back_locked(key, lease, lease.surplus())
        finally:
            lease.trimming = False

    async def _give_back_locked(self, key: str, lease: LocalLease, units: int) -> None:
        units = max(0, min(units, lease.held))
        if self._down() or (not units and lease.holding >= lease.reported):
            return
        lease.held -= units
        holding = lease.holding
        level = await self._call(self._ledger.give_back(key, lease.dimension, holder=self._holder, units=units,
                                                        holding=holding))
        if level is not _FAILED:
            lease.reported = holding
            lease.heard(level, self._clock())
        # On failure the units are gone from here, and `reported` stays high, so a later sweep tells the
        # ledger again: it then counts them spent (slots: free).

    async def flush(self, key: str, lease: LocalLease) -> None:
        """Sends the tokens owed (or refunded) past the lease; one flush at a time per lease."""
        if lease.flushing or self._down():
            return
        lease.flushing = True
        try:
            while lease.owed:
                units, lease.owed = lease.owed, 0
                level = await self._call(self._ledger.charge(key, lease.dimension, units=units))
                if level is _FAILED:
                    return  # dropped, not retried: a charge that timed out may have landed, and must not land twice
                lease.heard(level, self._clock())
        finally:
            lease.flushing = False

    async def sweep(self) -> None:
        """Sends pending debts, returns leases idle for the TTL, and renews this holder while it holds units."""
        for key, leases in list(self._leases.items()):
            for lease in leases.values():
                if lease.owed:
                    await self.flush(key, lease)
                if lease.idle(self._clock(), self._ttl_s) and not lease.lock.locked():
                    await self.give_back(key, lease, lease.held)
        if self._holds_any() and self._clock() - self._last_contact >= RENEW_EVERY_S and not self._down():
            await self._call(self._ledger.renew(holder=self._holder))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` in the background, held so it is not collected, its failure logged."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:
            work.close()  # no event loop here: the next sweep sends what this would have
            return
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def close(self) -> None:
        """Stops the sweeper and hands every unspent unit back, for a replica shutting down."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for key, leases in self._leases.items():
            for lease in leases.values():
                await self.flush(key, lease)
                await self.give_back(key, lease, lease.held)

    async def _call(self, request: Awaitable[Any]) -> Any:
        try:
            answer = await asyncio.wait_for(request, self._timeout_s)
        except Exception as exc:  # not CancelledError: a client that hangs up still cancels its request
            self._failed(exc)
            return _FAILED
        self._last_contact = self._clock()
        return answer

    def _failed(self, exc: Exception) -> None:
        now = self._clock()
        if now >= self._down_until:
            logger.warning("quota ledger unreachable (%s: %s): admitting without cluster-wide quotas for %.0fs",
                           type(exc).__name__, exc, LEDGER_RETRY_S)
        self._down_until = now + LEDGER_RETRY_S

    def _down(self) -> bool:
        return self._clock() < self._down_until

    def _holds_any(self) -> bool:
        return any(lease.holding or lease.reported for leases in self._leases.values() for lease in leases.values())

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every_s)
            try:
                await self.sweep()
            except Exception:
                logger.exception("quota lease sweep failed; trying again at the next one")

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("quota background task failed", exc_info=task.exception())
