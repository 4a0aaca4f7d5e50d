"""The per-key limits the quota limiter enforces, and the three dimensions it counts them in."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SECONDS_PER_WINDOW = 60.0


class Dimension(StrEnum):
    """What a bucket counts; the value is the word a 429 names (`Admission.limit`)."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENT = "concurrent"

    @property
    def refills(self) -> bool:
        """Requests and tokens refill over a minute; a concurrency slot comes back only when it is released."""
        return self is not Dimension.CONCURRENT


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits; None means unlimited in that dimension."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"KeyLimits.{name} must be a whole number >= 1 or None (unlimited), got {value!r}")

    def capacities(self) -> dict[Dimension, int]:
        """The bucket size of each limited dimension; empty when the key has no limit at all."""
        pairs = ((Dimension.REQUESTS, self.rpm), (Dimension.TOKENS, self.tpm),
                 (Dimension.CONCURRENT, self.max_concurrent))
        return {dimension: capacity for dimension, capacity in pairs if capacity is not None}


def refill_rate(dimension: Dimension, capacity: int) -> float:
    """Units per second: a per-minute limit refills evenly over the minute; slots do not refill."""
    return capacity / SECONDS_PER_WINDOW if dimension.refills else 0.0
