"""The ledger's token bucket for one (key, dimension), with the units each router replica holds on lease."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A slot frees when some request ends, which no clock predicts: a refused caller is told to retry this soon.
SLOT_RETRY_S = 1.0


@dataclass
class Bucket:
    """A token bucket whose units can be lent to holders (router replicas) and later returned.

    Invariant: `level + sum(held) <= capacity`. A lent unit leaves the level at once and counts against the
    refill ceiling until its holder returns it or reports it spent, so lending never mints units: the holders
    together spend at most what one bucket would admit. `level` goes negative when tokens are charged as debt."""

    capacity: int
    rate: float  # units per second; 0 for concurrency slots, which come back only when released
    level: float
    updated: float
    held: dict[str, int] = field(default_factory=dict)

    @classmethod
    def full(cls, capacity: int, rate: float, now: float) -> Bucket:
        return cls(capacity=capacity, rate=rate, level=float(capacity), updated=now)

    @property
    def room(self) -> int:
        """The most the level may hold: the capacity less what is out on lease."""
        return self.capacity - sum(self.held.values())

    def refill(self, now: float) -> None:
        if now <= self.updated:
            return
        if self.level < self.room:
            self.level = min(float(self.room), self.level + self.rate * (now - self.updated))
        self.updated = now

    def lend(self, holder: str, want: int, need: int) -> int:
        """Lends up to `want` whole units, or none when fewer than `need` are there (a lease is never partial
        below what the request needs)."""
        available = math.floor(self.level)
        if available < max(need, 1):
            return 0
        units = min(want, available)
        self.level -= units
        self.held[holder] = self.held.get(holder, 0) + units
        return units

    def put_back(self, holder: str, units: int) -> None:
        """Unspent units come back to the level; a holder cannot return more than it was lent."""
        returned = self._take_from(holder, units)
        self.level += returned

    def settle(self, holder: str, holding: int) -> None:
        """The holder says it holds `holding` units now: the rest of its lease was spent (or, for slots, freed).

        Only ever lowers the count, so a stale or repeated report cannot inflate it."""
        dropped = self._take_from(holder, self.held.get(holder, 0) - max(holding, 0))
        if not self.rate:
            # Slots are never spent: a slot no holder holds any more is free again.
            self.level += dropped

    def forget(self, holder: str) -> int:
        """The holder is gone (its replica died): what it held is spent, and its slots are free. Answers how
        much it held."""
        held = self.held.get(holder, 0)
        self.settle(holder, 0)
        return held

    def charge(self, units: int) -> None:
        """Charges (or, negative, refunds) units outside any lease: the real token count settled after a reply."""
        self.level -= units
        if units < 0:
            self.level = min(self.level, float(self.room))

    def wait_s(self, need: int) -> float:
        """Seconds of refill until the level holds `need` units (debt included)."""
        shortfall = need - self.level
        if shortfall <= 0:
            return 0.0
        return shortfall / self.rate if self.rate else SLOT_RETRY_S

    def _take_from(self, holder: str, units: int) -> int:
        lent = self.held.get(holder, 0)
        units = max(0, min(units, lent))
        if lent - units > 0:
            self.held[holder] = lent - units
        else:
            self.held.pop(holder, None)
        return units
