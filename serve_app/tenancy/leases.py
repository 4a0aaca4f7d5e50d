"""What one router replica holds of one (key, dimension) bucket: local bookkeeping, no I/O."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from serve_app.tenancy.limits import Dimension, refill_rate

# The cluster-wide share of a limit that the replicas' leases may hold at once: small enough that stranded
# units hardly matter, large enough that a busy replica goes to the ledger once every many requests.
LEASE_SHARE = 0.1


def lease_size(capacity: int, replicas: int, share: float = LEASE_SHARE) -> int:
    """Units a replica asks for at a time: its share of `share` of the capacity, at least one."""
    return max(1, int(capacity * share / max(replicas, 1)))


@dataclass
class LocalLease:
    """Units lent to this replica by the ledger, spent here without a round trip.

    For requests and tokens a spent unit is gone; a concurrency slot goes from `held` to `in_use` and back."""

    dimension: Dimension
    capacity: int
    lease_size: int
    rate: float = 0.0  # refill, units per second
    held: int = 0  # lent and unspent (slots: free)
    in_use: int = 0  # slots taken by requests in flight
    reported: int = 0  # what the ledger counts as lent to this replica, as far as this replica knows
    owed: int = 0  # tokens spent past the lease (negative: refunded), not yet sent to the ledger
    used_at: float = 0.0
    view_level: float = 0.0  # the ledger's level when last heard from, for the headers' remaining counts
    view_at: float = 0.0
    flushing: bool = False  # a task is sending `owed`; others leave it to that task
    trimming: bool = False  # a task is returning the surplus slots
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    @classmethod
    def fresh(cls, dimension: Dimension, capacity: int, size: int, now: float) -> LocalLease:
        # Buckets start full, so before the first lease the headers show the whole limit as remaining.
        return cls(dimension, capacity, size, rate=refill_rate(dimension, capacity), used_at=now,
                   view_level=float(capacity), view_at=now)

    @property
    def holding(self) -> int:
        """All this replica holds of the ledger's units (for slots, those in use too)."""
        return self.held + self.in_use

    def take(self, units: int, now: float) -> bool:
        if self.held < units:
            return False
        self.held -= units
        if self.dimension is Dimension.CONCURRENT:
            self.in_use += units
        self.used_at = now
        return True

    def untake(self, units: int) -> None:
        """Undoes `take` for a request refused on another dimension."""
        self.held += units
        if self.dimension is Dimension.CONCURRENT:
            self.in_use -= units

    def release_slot(self, now: float) -> None:
        # The slot stays here for the lease TTL: a busy replica reuses it without a round trip.
        self.in_use -= 1
        self.held += 1
        self.used_at = now

    def spend(self, units: int) -> None:
        """Spends tokens past what `take` reserved: from the lease while it lasts, then as debt to send on."""
        from_lease = min(self.held, units)
        self.held -= from_lease
        self.owed += units - from_lease

    def refund(self, units: int) -> None:
        """Gives back tokens admission took but the reply did not use."""
        # Back into the lease only as many as the ledger still counts as lent here (spent since the last
        # report): those it has not taken for spent yet. The rest it has, so they go back to it as a refund.
        local = max(0, min(units, self.reported - self.holding))
        self.held += local
        self.owed -= units - local

    def want(self, need: int) -> tuple[int, int]:
        """(want, need) to ask the ledger for, so that `need` units are here afterwards."""
        shortfall = max(need - self.held, 1)
        return max(self.lease_size, shortfall), shortfall

    def granted(self, units: int, holding_sent: int, level: float, now: float) -> None:
        self.held += units
        self.reported = holding_sent + units
        self.heard(level, now)

    def heard(self, level: float, now: float) -> None:
        self.view_level, self.view_at = level, now

    def surplus(self) -> int:
        """Free slots past twice a lease, after a burst: returned at once rather than stranded until the TTL."""
        return self.held - self.lease_size if self.held > 2 * self.lease_size else 0

    def idle(self, now: float, ttl_s: float) -> bool:
        """Unused for the TTL while holding units, or while the ledger still counts spent ones as lent."""
        return now - self.used_at >= ttl_s and (self.held > 0 or self.holding < self.reported)

    def window(self, now: float) -> tuple[int, float]:
        """(remaining, seconds until full again) as this replica sees it: its lease, plus the ledger's level as
        last heard, refilled since."""
        ledger = min(self.view_level + self.rate * max(0.0, now - self.view_at), self.capacity)
        remaining = max(0, min(self.capacity, math.floor(ledger + self.held - max(self.owed, 0))))
        return remaining, (self.capacity - remaining) / self.rate if self.rate else 0.0
