"""Wiring quotas into Serve: the ledger as a deployment, and each router replica's gate, from the same keys."""

from __future__ import annotations

from typing import Any

from serve_app.config import RouterConfig
from serve_app.tenancy.keys import KeyStore, load_key_store
from serve_app.tenancy.limiter import KeyLimits, QuotaGate, QuotaLedger, ServeLedgerClient

LEDGER_DEPLOYMENT = "quota-ledger"


def key_limits(keys: KeyStore) -> dict[str, KeyLimits]:
    """The limits of every key that has one; keys without limits never reach the limiter."""
    return {t.name: KeyLimits(t.quota.rpm, t.quota.tpm, t.quota.max_concurrent)
            for t in keys.tenants if not t.quota.unlimited}


def quota_gate(keys: KeyStore, ledger_handle: Any, replicas: int) -> QuotaGate | None:
    """A router replica's limiter; None when no key has a quota, so that quotas then cost nothing."""
    limits = key_limits(keys)
    if not limits:
        return None
    return QuotaGate(limits, ServeLedgerClient(ledger_handle), replicas=replicas)


class LedgerReplica(QuotaLedger):
    """The cluster's one ledger, a Serve deployment of one replica; it reads the keys the routers read."""

    def __init__(self, router: RouterConfig, model_names: dict[str, str]) -> None:
        super().__init__(key_limits(load_key_store(router, model_names)))
