"""A router replica's per-key quota gate: admits from leases of the cluster's ledger, or says which limit refused."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from serve_app.tenancy.lease_broker import LEDGER_TIMEOUT_S, LeaseBroker
from serve_app.tenancy.leases import LEASE_SHARE, LocalLease, lease_size
from serve_app.tenancy.ledger import LedgerClient, QuotaLedger, ServeLedgerClient
from serve_app.tenancy.limits import Dimension, KeyLimits
from serve_app.tenancy.ratelimit_headers import rate_limit_headers
from serve_app.tenancy.tokens import estimate_prompt_tokens, usage_tokens

__all__ = ["Admission", "KeyLimits", "LedgerClient", "QuotaGate", "QuotaLedger", "ServeLedgerClient",
           "estimate_prompt_tokens", "usage_tokens"]

# How long unused units stay with an idle replica before going back to the ledger for other replicas to use.
LEASE_TTL_S = 1.0
# A lease filled by one request can be drained by others before that request takes from it; it tries again
# this many times, then is told to retry shortly (only under heavy contention on a nearly empty bucket).
MAX_FILLS = 3


@dataclass
class Admission:
    """The gate's answer for one request; `finish` must follow an admitted one when its reply ends."""

    admitted: bool
    limit: str | None = None  # which limit refused: "requests" | "tokens" | "concurrent"
    retry_after_s: int | None = None  # for Retry-After, when refused
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, for the limits the key has
    on_finish: Callable[[int | None], None] | None = field(default=None, repr=False, compare=False)

    def finish(self, total_tokens: int | None) -> None:
        """Settles the reply's real prompt + completion tokens (None: the estimate stands) and frees the
        concurrency slot. Only the first call counts; sync, any ledger traffic goes on in the background."""
        settle, self.on_finish = self.on_finish, None
        if settle is not None:
            settle(total_tokens)


@dataclass(frozen=True)
class _Refusal:
    wait_s: float


class QuotaGate:
    """One per router replica. `replicas` is how many router replicas share the ledger (the most there will
    be): it sizes the leases so that all of them together strand at most LEASE_SHARE of a limit."""

    def __init__(self, limits: dict[str, KeyLimits], ledger: LedgerClient, *, replicas: int = 1,
                 clock: Callable[[], float] = time.monotonic, holder: str | None = None,
                 lease_ttl_s: float = LEASE_TTL_S, lease_share: float = LEASE_SHARE,
                 ledger_timeout_s: float = LEDGER_TIMEOUT_S, sweep_every_s: float | None = None) -> None:
        self._clock = clock
        now = clock()
        self._leases = {key: {dimension: LocalLease.fresh(dimension, capacity,
                                                          lease_size(capacity, replicas, lease_share), now)
                              for dimension, capacity in capacities.items()}
                        for key, limit in limits.items() if (capacities := limit.capacities())}
        self._broker = LeaseBroker(ledger, self._leases, holder=holder or f"router-{uuid.uuid4().hex[:12]}",
                                   clock=clock, ttl_s=lease_ttl_s, timeout_s=ledger_timeout_s,
                                   sweep_every_s=sweep_every_s)

    async def admit(self, key_name: str, prompt_tokens: int) -> Admission:
        """Admits the request if every limit of the key has room for it, spending one request, the prompt
        estimate and one slot; a key without limits is admitted at no cost."""
        leases = self._leases.get(key_name)
        if leases is None:
            return Admission(admitted=True)
        estimate = max(1, int(prompt_tokens))
        taken: dict[Dimension, int] = {}
        try:
            for dimension, lease in leases.items():
                # A prompt larger than the whole bucket waits for a full bucket, then goes into debt for the rest.
                need = min(estimate, lease.capacity) if dimension is Dimension.TOKENS else 1
                outcome = True if lease.take(need, self._clock()) else await self._reserve(key_name, lease, need)
                if isinstance(outcome, _Refusal):
                    self._untake(leases, taken)
                    return self._refused(leases, dimension, outcome)
                if outcome:
                    taken[dimension] = need
        except BaseException:
            self._untake(leases, taken)  # cancelled while waiting on the ledger: give back what was taken
            raise
        if Dimension.TOKENS in taken and estimate > taken[Dimension.TOKENS]:
            self._settle_tokens(key_name, leases[Dimension.TOKENS], estimate - taken[Dimension.TOKENS])
        return Admission(admitted=True, headers=rate_limit_headers(leases, self._clock()),
                         on_finish=partial(self._finish, key_name, taken, estimate))

    async def sweep(self) -> None:
        """Returns leases idle for the TTL and sends pending token debts; runs in the background on its own
        (from the first lease on), callable directly to do it now."""
        await self._broker.sweep()

    async def close(self) -> None:
        """Hands every unspent unit back to the ledger; for a replica shutting down."""
        await self._broker.close()

    async def _reserve(self, key: str, lease: LocalLease, need: int) -> bool | _Refusal:
        """Takes `need` units, filling the lease from the ledger first; False: the ledger is unreachable and
        this limit is not enforced for this request (fail open)."""
        # One fill at a time per lease: a burst of requests on an empty lease makes one ledger call, not many.
        async with lease.lock:
            for _ in range(MAX_FILLS):
                if lease.take(need, self._clock()):
                    return True
                grant = await self._broker.fill(key, lease, need)
                if grant is None:
                    return False
                if not grant.granted:
                    return _Refusal(grant.wait_s)
            return _Refusal(0.0)

    def _refused(self, leases: dict[Dimension, LocalLease], dimension: Dimension, refusal: _Refusal) -> Admission:
        return Admission(admitted=False, limit=str(dimension), retry_after_s=max(1, math.ceil(refusal.wait_s)),
                         headers=rate_limit_headers(leases, self._clock()))

    def _finish(self, key: str, taken: dict[Dimension, int], estimate: int, total_tokens: int | None) -> None:
        leases = self._leases[key]
        if Dimension.CONCURRENT in taken:
            slots = leases[Dimension.CONCURRENT]
            slots.release_slot(self._clock())
            if slots.surplus() and not slots.trimming:
                self._broker.spawn(self._broker.trim(key, slots))
        if Dimension.TOKENS in taken and total_tokens is not None:
            self._settle_tokens(key, leases[Dimension.TOKENS], max(0, int(total_tokens)) - estimate)

    def _settle_tokens(self, key: str, lease: LocalLease, extra: int) -> None:
        """Charges `extra` tokens past what admission took (negative: refunds them)."""
        if extra > 0:
            lease.spend(extra)
        elif extra < 0:
            lease.refund(-extra)
        if lease.owed and not lease.flushing:
            self._broker.spawn(self._broker.flush(key, lease))

    @staticmethod
    def _untake(leases: dict[Dimension, LocalLease], taken: dict[Dimension, int]) -> None:
        for dimension, units in taken.items():
            leases[dimension].untake(units)
        taken.clear()
