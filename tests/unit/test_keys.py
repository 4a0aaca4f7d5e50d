"""API keys: the keys file, legacy env keys, authentication, per-key models, `llmcluster keys new`, start checks."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from serve_app.config import AuthConfig, RouterConfig, parse_config
from serve_app.tenancy.keys import (KeysFileError, KeyStore, Quota, Tenant, load_key_store, pin_keys_file,
                                    served_model_names)

# Every served name and alias -> canonical name, as the router builds it from the config below.
MODEL_NAMES = {"smollm2": "smollm2", "default": "smollm2", "tiny-random": "tiny-random", "tiny": "tiny-random"}
CONFIG = {"models": [{"name": "smollm2", "aliases": ["default"], "source": "org/a"},
                     {"name": "tiny-random", "aliases": ["tiny"], "source": "org/b"}]}
PLAIN_KEY = "sk-plain-do-not-print-7f3a"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys(tmp_path: Path, entries: Any, name: str = "keys.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def router(keys_file: Path | None = None, api_keys_env: str | None = None) -> RouterConfig:
    return RouterConfig(auth=AuthConfig(keys_file=str(keys_file) if keys_file else None), api_keys_env=api_keys_env)


def load(tmp_path: Path, entries: Any, environ: dict[str, str] | None = None, **options: Any) -> KeyStore:
    return load_key_store(router(write_keys(tmp_path, entries), **options), MODEL_NAMES, environ or {})


def error_of(tmp_path: Path, entries: Any, **options: Any) -> str:
    with pytest.raises(KeysFileError) as caught:
        load(tmp_path, entries, **options)
    return str(caught.value)


# --- loading ----------------------------------------------------------------------------------------------------

def test_a_good_file_gives_one_tenant_per_key(tmp_path: Path) -> None:
    store = load(tmp_path, [
        {"name": "team-a", "key_sha256": sha("key-a").upper(), "models": ["default"], "rpm": 600, "tpm": 200000,
         "max_concurrent": 32},
        {"name": "team.b_2", "key": "key-b", "models": ["*"]},
    ])
    assert not store.open
    team_a, team_b = store.tenants
    assert team_a == Tenant("team-a", frozenset({"smollm2"}), Quota(rpm=600, tpm=200000, max_concurrent=32))
    assert team_b == Tenant("team.b_2", None, Quota())
    assert store.authenticate("key-a") is team_a
    assert store.authenticate("key-b") is team_b


def test_quota_is_unlimited_only_without_any_limit() -> None:
    assert Quota().unlimited
    assert not Quota(rpm=1).unlimited and not Quota(tpm=1).unlimited and not Quota(max_concurrent=1).unlimited


def test_no_source_leaves_the_api_open() -> None:
    store = load_key_store(router(), MODEL_NAMES, {})
    assert store.open and store.tenants == []
    assert store.authenticate("anything") is None


def test_the_env_var_names_a_keys_file_when_the_config_does_not(tmp_path: Path) -> None:
    from_env = write_keys(tmp_path, [{"name": "env-file", "key": "k1", "models": ["*"]}], "env.yaml")
    from_config = write_keys(tmp_path, [{"name": "config-file", "key": "k2", "models": ["*"]}], "config.yaml")
    environ = {"LLMCLUSTER_KEYS_FILE": str(from_env)}
    assert [t.name for t in load_key_store(router(), MODEL_NAMES, environ).tenants] == ["env-file"]
    assert [t.name for t in load_key_store(router(from_config), MODEL_NAMES, environ).tenants] == ["config-file"]


def test_legacy_env_keys_are_tenants_with_every_model_and_no_limits() -> None:
    environ = {"API_KEYS": " k1, k2 ,,k1"}
    store = load_key_store(router(api_keys_env="API_KEYS"), MODEL_NAMES, environ)
    assert store.tenants == [Tenant("env-key-1", None, Quota()), Tenant("env-key-2", None, Quota())]
    assert store.authenticate("k2") == Tenant("env-key-2", None, Quota())


@pytest.mark.parametrize("value", [None, "", " , "])
def test_legacy_env_var_without_keys_stops_the_start(value: str | None) -> None:
    environ = {} if value is None else {"API_KEYS": value}
    with pytest.raises(KeysFileError, match="router.api_keys_env names API_KEYS, which holds no keys"):
        load_key_store(router(api_keys_env="API_KEYS"), MODEL_NAMES, environ)


def test_a_keys_file_and_legacy_env_keys_combine(tmp_path: Path) -> None:
    store = load(tmp_path, [{"name": "team-a", "key": "file-key", "models": ["tiny"]}],
                 environ={"API_KEYS": "env-key"}, api_keys_env="API_KEYS")
    assert [t.name for t in store.tenants] == ["team-a", "env-key-1"]
    assert store.authenticate("file-key").name == "team-a"
    assert store.authenticate("env-key").name == "env-key-1"


def test_a_key_in_both_sources_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, [{"name": "team-a", "key_sha256": sha("same"), "models": ["*"]}],
                       environ={"API_KEYS": "same"}, api_keys_env="API_KEYS")
    assert "key 1 of $API_KEYS" in message and "keys[0] (team-a)" in message and str(tmp_path) in message


def test_a_file_name_that_a_legacy_key_takes_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, [{"name": "env-key-1", "key": "k", "models": ["*"]}],
                       environ={"API_KEYS": "other"}, api_keys_env="API_KEYS")
    assert "name: 'env-key-1'" in message and "keys[0] (env-key-1)" in message


# --- every mistake names the file, the entry and the field ----------------------------------------------------

GOOD = {"name": "ok", "key": "k-ok", "models": ["*"]}


@pytest.mark.parametrize(("entries", "expected"), [
    ([{**GOOD, "rpmm": 5}], ["keys[0] (ok): rpmm: unknown field", "allowed here: name, key_sha256, key"]),
    ([GOOD, {"name": "bad", "key_sha256": "abc123", "models": ["*"]}], ["keys[1] (bad): key_sha256:", "64 hex"]),
    ([{"name": "both", "key": "k", "key_sha256": sha("k"), "models": ["*"]}], ["keys[0] (both):", "exactly one"]),
    ([{"name": "neither", "models": ["*"]}], ["keys[0] (neither):", "key_sha256", "exactly one"]),
    ([{**GOOD, "key": " k "}], ["keys[0] (ok): key: must not be empty"]),
    ([GOOD, {**GOOD, "key": "other"}], ["keys[1] (ok): name: 'ok' is also the name of keys[0] (ok)"]),
    ([{"name": "a", "key": "same", "models": ["*"]}, {"name": "b", "key_sha256": sha("same"), "models": ["*"]}],
     ["keys[1] (b): key_sha256: the same key as keys[0] (a)"]),
    ([{**GOOD, "models": ["default", "gpt-4"]}],
     ["keys[0] (ok): models: 'gpt-4' not served", "served names: smollm2, default, tiny-random, tiny"]),
    ([{**GOOD, "models": ["*", "tiny"]}], ["keys[0] (ok): models:", "cannot be combined"]),
    ([{**GOOD, "models": []}], ["keys[0] (ok): models:"]),
    ([{"name": "no-models", "key": "k"}], ["keys[0] (no-models): models: Field required"]),
    ([{**GOOD, "rpm": 0}], ["keys[0] (ok): rpm:", "greater than or equal to 1"]),
    ([{**GOOD, "tpm": "lots"}], ["keys[0] (ok): tpm:"]),
    ([{**GOOD, "max_concurrent": -1}], ["keys[0] (ok): max_concurrent:"]),
    ([{**GOOD, "name": "team a"}], ["keys[0] (team a): name: must be 1 to 64 letters, digits"]),
    ([{"key": "k", "models": ["*"]}], ["keys[0]: name: Field required"]),
    ([GOOD, "just-a-string"], ["keys[1]: (entry):"]),
], ids=["unknown-field", "bad-digest", "both-key-fields", "no-key-field", "padded-key", "duplicate-name",
        "duplicate-key", "unknown-model", "star-with-names", "no-models", "missing-models", "rpm-zero", "tpm-not-int",
        "negative-concurrency", "bad-name", "missing-name", "entry-not-a-mapping"])
def test_a_bad_entry_is_named_with_its_field(tmp_path: Path, entries: list[Any], expected: list[str]) -> None:
    message = error_of(tmp_path, entries)
    assert str(tmp_path / "keys.yaml") in message
    for fragment in expected:
        assert fragment in message, message


@pytest.mark.parametrize(("text", "expected"), [
    (None, ["cannot read keys file", "router.auth.keys_file", "No such file"]),
    ("keys: [\n  - name: a\n", ["is not valid YAML at line"]),
    ("keys: []\n", ["lists no keys", "llmcluster keys new"]),
    ("", ["must be a mapping with a `keys:` list"]),
    ("- name: a\n", ["must be a mapping with a `keys:` list"]),
    ("tokens: []\n", ["tokens: unknown field", "keys: Field required"]),
], ids=["missing", "invalid-yaml", "empty-list", "empty-file", "top-level-list", "wrong-top-level-field"])
def test_a_bad_file_is_named(tmp_path: Path, text: str | None, expected: list[str]) -> None:
    path = tmp_path / "keys.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(KeysFileError) as caught:
        load_key_store(router(path), MODEL_NAMES, {})
    assert str(path) in str(caught.value)
    for fragment in expected:
        assert fragment in str(caught.value), str(caught.value)


def test_errors_never_show_a_key_or_its_digest(tmp_path: Path) -> None:
    digest = sha(PLAIN_KEY)
    cases = [
        [{"name": "a", "key": PLAIN_KEY, "models": ["gpt-4"]}],                    # a later, cross-entry check
        [{"name": "a", "key": PLAIN_KEY, "models": ["*"], "extra": 1}],             # a schema error in the entry
        [{"name": "a", "key_sha256": PLAIN_KEY, "models": ["*"]}],                  # a key pasted as its digest
        [{"name": "a", "key": PLAIN_KEY, "models": ["*"]}, {"name": "b", "key": PLAIN_KEY, "models": ["*"]}],
    ]
    for entries in cases:
        message = error_of(tmp_path, entries)
        assert PLAIN_KEY not in message and PLAIN_KEY[:8] not in message and digest[:8] not in message, message
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"keys:\n  - name: a\n    key: {PLAIN_KEY}\n   models: [x\n")
    with pytest.raises(KeysFileError) as caught:
        load_key_store(router(broken), MODEL_NAMES, {})
    assert PLAIN_KEY[:8] not in str(caught.value)


# --- authentication ---------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return load(tmp_path, [{"name": f"t{i}", "key": f"key-{i}", "models": ["*"]} for i in range(5)])


def test_authenticate_finds_the_holder_of_a_key(store: KeyStore) -> None:
    assert [store.authenticate(f"key-{i}").name for i in range(5)] == ["t0", "t1", "t2", "t3", "t4"]


@pytest.mark.parametrize("presented", [None, "", "key-", "key-10", "KEY-1", " key-1", sha("key-1")])
def test_authenticate_refuses_anything_else(store: KeyStore, presented: str | None) -> None:
    assert store.authenticate(presented) is None


def test_every_stored_digest_is_compared_in_constant_time_whatever_matches(
        store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which key matched, and whether one did, must not change the work done: no early exit."""
    calls: list[int] = []
    constant_time = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls[-1] += 1
        return constant_time(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in ("key-0", "key-4", "wrong"):
        calls.append(0)
        store.authenticate(presented)
    assert calls == [5, 5, 5]


# --- per-key models ---------------------------------------------------------------------------------------------

def test_may_use_resolves_aliases_and_star(tmp_path: Path) -> None:
    by_alias, every = load(tmp_path, [{"name": "a", "key": "ka", "models": ["default"]},
                                      {"name": "b", "key": "kb", "models": ["*"]}]).tenants
    assert by_alias.models == frozenset({"smollm2"})
    assert by_alias.may_use("smollm2") and not by_alias.may_use("tiny-random")
    assert every.models is None and every.may_use("smollm2") and every.may_use("tiny-random")


def test_served_model_names_map_aliases_to_their_model() -> None:
    assert served_model_names(parse_config(CONFIG)) == MODEL_NAMES


def test_pin_keys_file_writes_the_env_file_into_the_config_as_an_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pinned = pin_keys_file(router(), {"LLMCLUSTER_KEYS_FILE": "keys.yaml"})
    assert pinned.auth.keys_file == str(tmp_path / "keys.yaml")
    assert pin_keys_file(router(), {}) == router()


# --- the command line -------------------------------------------------------------------------------------------

def new_key_output(name: str) -> tuple[str, list[dict[str, Any]]]:
    result = CliRunner().invoke(app, ["keys", "new", name])
    assert result.exit_code == 0, result.output
    (key,) = re.findall(r"^\s+(sk-llmc-\S+)$", result.output, flags=re.MULTILINE)
    entry_text = result.output.split("under `keys:`", 1)[1].split("\n", 1)[1]
    return key, yaml.safe_load(entry_text)


def test_keys_new_prints_a_key_and_an_entry_that_loads_back(tmp_path: Path) -> None:
    key, entries = new_key_output("team-x")
    assert len(key) > len("sk-llmc-") + 40
    assert entries == [{"name": "team-x", "key_sha256": sha(key), "models": ["*"]}]
    store = load(tmp_path, entries)
    assert store.authenticate(key) == Tenant("team-x", None, Quota())
    assert new_key_output("team-x")[0] != key


def test_keys_new_refuses_a_bad_name() -> None:
    result = CliRunner().invoke(app, ["keys", "new", "team x"])
    assert result.exit_code == 2 and "must be 1 to 64 letters" in result.output


def write_config(tmp_path: Path, keys_file: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "router": {"auth": {"keys_file": str(keys_file)}}}))
    return path


def test_validate_and_serve_stop_on_a_bad_keys_file(tmp_path: Path) -> None:
    bad = write_keys(tmp_path, [{"name": "team-a", "key_sha256": "not-a-digest", "models": ["*"]}])
    for command in ("validate", "serve"):
        result = CliRunner().invoke(app, [command, str(write_config(tmp_path, bad))])
        assert result.exit_code == 2, result.output
        assert "keys[0]" in result.output and "key_sha256" in result.output


def test_validate_lists_the_tenants_of_a_good_keys_file(tmp_path: Path) -> None:
    good = write_keys(tmp_path, [{"name": "team-a", "key": "k", "models": ["tiny"]}])
    result = CliRunner().invoke(app, ["validate", str(write_config(tmp_path, good))])
    assert result.exit_code == 0, result.output
    assert "API keys: 1 (team-a)" in result.output
