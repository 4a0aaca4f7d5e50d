"""The quota ledger: the cluster's one copy of every key's buckets, lent to router replicas in small leases.

Exactness: a bucket never lends more than its level holds, and a lent unit stays counted against the refill
ceiling until its holder returns it or reports it spent, so all router replicas together admit at most what one
token bucket would (capacity + rate x T in any T seconds; never more than max_concurrent slots in flight). What
leasing costs is under-admission: each replica may keep up to 2 x lease size units of a bucket idle, for at most
the lease TTL plus one sweep, and units it spent but has not reported yet (at most a lease) keep the bucket from
refilling to the brim until its next call. Exceptions, all towards admitting more: the gates fail open while the ledger is
unreachable; a restarted ledger starts with full buckets while replicas still hold their old leases; tokens are
admitted on the prompt estimate and the real total is settled after the reply (as debt, which delays later
requests). A holder silent for `holder_timeout_s` is taken for dead and its slots are freed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.tenancy.buckets import Bucket
from serve_app.tenancy.limits import Dimension, KeyLimits, refill_rate

logger = logging.getLogger(__name__)

# A router replica renews well within this while it holds anything, so only a dead replica outlives it.
HOLDER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Grant:
    """The ledger's answer to a lease request."""

    granted: int  # units lent now; 0 when the bucket holds fewer than the request needed
    level: float  # the bucket's level after this call (negative while the key is in debt)
    wait_s: float  # when refused: seconds of refill until the bucket could hold what was needed


class QuotaLedger:
    """Every limited key's buckets, shared by all router replicas; one instance per cluster (a Serve deployment
    with one replica). Methods are async for Serve, and none awaits inside, so each call is atomic."""

    def __init__(self, limits: dict[str, KeyLimits], *, clock: Callable[[], float] = time.monotonic,
                 holder_timeout_s: float = HOLDER_TIMEOUT_S) -> None:
        self._capacities = {key: caps for key, limit in limits.items() if (caps := limit.capacities())}
        self._clock = clock
        self._holder_timeout_s = holder_timeout_s
        self._buckets: dict[tuple[str, Dimension], Bucket] = {}
        self._seen: dict[str, float] = {}

    async def lease(self, key: str, dimension: str, *, holder: str, want: int, need: int, holding: int) -> Grant:
        """Lends `holder` between `need` and `want` units, or none; `holding` is what it holds before this call."""
        now = self._touch(holder)
        bucket = self._bucket(key, dimension, now)
        if bucket is None:
            # A key this ledger has no limit for (configs out of step during a rollout): unlimited here too.
            return Grant(granted=want, level=float(want), wait_s=0.0)
        bucket.settle(holder, holding)
        granted = bucket.lend(holder, want, need)
        return Grant(granted=granted, level=bucket.level, wait_s=0.0 if granted else bucket.wait_s(need))

    async def give_back(self, key: str, dimension: str, *, holder: str, units: int, holding: int) -> float:
        """Returns `units` unspent units; `holding` is what the holder still holds after. Answers the level."""
        now = self._touch(holder)
        bucket = self._bucket(key, dimension, now)
        if bucket is None:
            return 0.0
        bucket.put_back(holder, units)
        bucket.settle(holder, holding)
        return bucket.level

    async def charge(self, key: str, dimension: str, *, units: int) -> float:
        """Charges units past any lease (negative: refunds them); the bucket may go into debt. Answers the level."""
        now = self._touch(None)
        bucket = self._bucket(key, dimension, now)
        if bucket is None:
            return 0.0
        bucket.charge(units)
        return bucket.level

    async def renew(self, *, holder: str) -> None:
        """Says `holder` is alive, so what it holds stays counted as its own."""
        self._touch(holder)

    def _touch(self, holder: str | None) -> float:
        now = self._clock()
        self._expire(now)
        if holder is not None:
            self._seen[holder] = now
        return now

    def _bucket(self, key: str, dimension: str, now: float) -> Bucket | None:
        dimension = Dimension(dimension)
        capacity = self._capacities.get(key, {}).get(dimension)
        if capacity is None:
            return None
        bucket = self._buckets.get((key, dimension))
        if bucket is None:
            # Lazily, and full: the same as a bucket made at start-up that has refilled since.
            bucket = self._buckets[(key, dimension)] = Bucket.full(capacity, refill_rate(dimension, capacity), now)
        bucket.refill(now)
        return bucket

    def _expire(self, now: float) -> None:
        gone = [holder for holder, seen in self._seen.items() if now - seen > self._holder_timeout_s]
        for holder in gone:
            del self._seen[holder]
            taken = 0
            for bucket in self._buckets.values():
                bucket.refill(now)
                taken += bucket.forget(holder)
            if taken:
                # An idle replica goes quiet with nothing held; one that still held units has most likely died.
                logger.warning("quota holder %s silent for %.0fs: took back the %d units it held", holder,
                               self._holder_timeout_s, taken)


class LedgerClient(Protocol):
    """What a router replica needs of the ledger; `QuotaLedger` itself satisfies it, in process."""

    async def lease(self, key: str, dimension: str, *, holder: str, want: int, need: int,
                    holding: int) -> Grant: ...

    async def give_back(self, key: str, dimension: str, *, holder: str, units: int, holding: int) -> float: ...

    async def charge(self, key: str, dimension: str, *, units: int) -> float: ...

    async def renew(self, *, holder: str) -> None: ...


class ServeLedgerClient:
    """The ledger behind a Serve DeploymentHandle (the `quota-ledger` deployment)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def lease(self, key: str, dimension: str, *, holder: str, want: int, need: int, holding: int) -> Grant:
        return await self._handle.lease.remote(key, str(dimension), holder=holder, want=want, need=need,
                                               holding=holding)

    async def give_back(self, key: str, dimension: str, *, holder: str, units: int, holding: int) -> float:
        return await self._handle.give_back.remote(key, str(dimension), holder=holder, units=units, holding=holding)

    async def charge(self, key: str, dimension: str, *, units: int) -> float:
        return await self._handle.charge.remote(key, str(dimension), units=units)

    async def renew(self, *, holder: str) -> None:
        await self._handle.renew.remote(holder=holder)
