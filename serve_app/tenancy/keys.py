"""API keys and the tenants they stand for: loaded once at start, then checked on every request in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app.tenancy.keys_file import ALL_MODELS, KeyEntry, KeysFileError, entry_label, read_entries

if TYPE_CHECKING:
    from serve_app.config import ClusterConfig, RouterConfig

__all__ = ["KEYS_FILE_ENV", "KeyStore", "KeysFileError", "Quota", "Tenant", "digest_of", "keys_file_location",
           "load_key_store", "pin_keys_file", "served_model_names"]

KEYS_FILE_ENV = "LLMCLUSTER_KEYS_FILE"
ENV_TENANT_PREFIX = "env-key-"


@dataclass(frozen=True)
class Quota:
    """How much one key may ask for; None is unlimited."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute, prompt and completion
    max_concurrent: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrent is None


@dataclass(frozen=True)
class Tenant:
    """Who holds a key; `name` stands for the key in metrics and logs, so the key itself never appears there."""

    name: str
    models: frozenset[str] | None  # canonical model names; None: every model
    quota: Quota
    admin: bool = False  # may read the cluster's status (GET /admin/status)

    def may_use(self, model_name: str) -> bool:
        """`model_name` is the model's canonical name (aliases resolved)."""
        return self.models is None or model_name in self.models


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys a request may present, stored as SHA-256 digests only."""

    def __init__(self, tenants_by_digest: dict[str, Tenant]) -> None:
        self._entries = tuple(tenants_by_digest.items())

    @property
    def open(self) -> bool:
        """No key is configured: every request is let in."""
        return not self._entries

    def authenticate(self, presented: str | None) -> Tenant | None:
        """The tenant holding `presented`, or None.

        Every stored digest is compared, in constant time and without stopping at a match, so the time taken
        tells nothing about which digest, or how much of one, matched."""
        if not presented:
            return None
        digest = digest_of(presented)
        found = None
        for stored, tenant in self._entries:
            if hmac.compare_digest(digest, stored):
                found = tenant
        return found

    @property
    def tenants(self) -> list[Tenant]:
        return [tenant for _, tenant in self._entries]


def served_model_names(config: ClusterConfig) -> dict[str, str]:
    """Every served name and alias -> its model's canonical name, as `load_key_store` takes it."""
    return {name: model.name for model in config.models for name in model.served_names}


def keys_file_location(router: RouterConfig, environ: Mapping[str, str] = os.environ) -> tuple[Path, str] | None:
    """The keys file and the setting that names it: router.auth.keys_file, else $LLMCLUSTER_KEYS_FILE."""
    if router.auth.keys_file:
        return Path(router.auth.keys_file), "router.auth.keys_file"
    if environ.get(KEYS_FILE_ENV):
        return Path(environ[KEYS_FILE_ENV]), KEYS_FILE_ENV
    return None


def pin_keys_file(router: RouterConfig, environ: Mapping[str, str] = os.environ) -> RouterConfig:
    """`router` with the keys file written in as an absolute path.

    Router replicas run in other processes, maybe on other nodes, with another working directory and
    environment: the path this process resolved is the one they must read."""
    located = keys_file_location(router, environ)
    if located is None:
        return router
    auth = router.auth.model_copy(update={"keys_file": str(located[0].expanduser().absolute())})
    return router.model_copy(update={"auth": auth})


@dataclass(frozen=True)
class _Key:
    """One key from any source, with what an error about it must name."""

    digest: str
    tenant: Tenant
    where: str  # e.g. "keys[2] (team-b)"
    field: str  # the field holding the key


def load_key_store(router: RouterConfig, model_names: dict[str, str],
                   environ: Mapping[str, str] = os.environ) -> KeyStore:
    """The keys of the keys file and of the legacy router.api_keys_env, together; none: an open KeyStore.

    `model_names` maps every served name and alias to its model's canonical name. Raises KeysFileError."""
    located = keys_file_location(router, environ)
    keys = _file_keys(*located, model_names) if located is not None else []
    if router.api_keys_env:
        env_keys = _env_keys(router.api_keys_env, environ)
        problems = _duplicates(keys + env_keys)  # the file's own repeats were caught while reading it
        if problems:
            raise KeysFileError(f"${router.api_keys_env} (router.api_keys_env) repeats a tenant name or a key "
                                f"of keys file {located[0] if located else ''}:\n" + "\n".join(problems))
        keys += env_keys
    return KeyStore({key.digest: key.tenant for key in keys})


def _file_keys(path: Path, origin: str, model_names: dict[str, str]) -> list[_Key]:
    entries = read_entries(path, origin)
    keys, problems = [], []
    for index, entry in enumerate(entries):
        where = entry_label(index, entry.name)
        unknown = [name for name in entry.models if name != ALL_MODELS and name not in model_names]
        if unknown:
            problems.append(f"  {where}: models: {', '.join(map(repr, unknown))} not served by this config; "
                            f"served names: {', '.join(model_names)}")
            continue
        keys.append(_Key(_entry_digest(entry), _tenant(entry, model_names), where,
                         "key" if entry.key is not None else "key_sha256"))
    problems += _duplicates(keys)
    if problems:
        raise KeysFileError(f"keys file {path} is invalid:\n" + "\n".join(problems))
    return keys


def _entry_digest(entry: KeyEntry) -> str:
    return digest_of(entry.key.get_secret_value()) if entry.key is not None else str(entry.key_sha256)


def _tenant(entry: KeyEntry, model_names: dict[str, str]) -> Tenant:
    models = None if ALL_MODELS in entry.models else frozenset(model_names[name] for name in entry.models)
    return Tenant(entry.name, models, Quota(entry.rpm, entry.tpm, entry.max_concurrent), admin=entry.admin)


def _env_keys(variable: str, environ: Mapping[str, str]) -> list[_Key]:
    """The legacy comma-separated plain keys: each a tenant of its own, every model, no limits."""
    plain = dict.fromkeys(k.strip() for k in environ.get(variable, "").split(",") if k.strip())
    if not plain:
        raise KeysFileError(f"router.api_keys_env names {variable}, which holds no keys")
    return [_Key(digest_of(key), Tenant(f"{ENV_TENANT_PREFIX}{number}", None, Quota()),
                 f"router.api_keys_env: key {number} of ${variable}", "key")
            for number, key in enumerate(plain, start=1)]


def _duplicates(keys: list[_Key]) -> list[str]:
    """A line per key whose tenant name or key an earlier one already has."""
    problems = []
    by_name: dict[str, _Key] = {}
    by_digest: dict[str, _Key] = {}
    for key in keys:
        if key.tenant.name in by_name:
            problems.append(f"  {key.where}: name: {key.tenant.name!r} is also the name of "
                            f"{by_name[key.tenant.name].where}; names must be unique")
        if key.digest in by_digest:
            problems.append(f"  {key.where}: {key.field}: the same key as {by_digest[key.digest].where}; "
                            "each key must be unique")
        by_name.setdefault(key.tenant.name, key)
        by_digest.setdefault(key.digest, key)
    return problems
