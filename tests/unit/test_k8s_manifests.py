"""The committed manifests under k8s/ match a fresh render, and every manifest passes strict schema checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.k8s_render import render, render_files
from serve_app.config import load_config
from tests.conftest import REPO_ROOT
from tests.k8s_schemas import ManifestChecker, crd_to_json_schema, load_yaml_documents, needs_crds

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
COMMITTED = sorted((REPO_ROOT / "k8s").glob("*/*.yaml"))


def regenerate_hint(config: Path) -> str:
    return f"regenerate with: llmcluster render k8s configs/{config.name}"


@pytest.fixture(scope="module")
def checker() -> ManifestChecker:
    return ManifestChecker.load()


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return render(load_config(REPO_ROOT / "configs" / "deepseek-v3.yaml"))["rayservice.yaml"]


# --- drift: what is committed is what the command writes ------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_committed_manifests_match_a_fresh_render(config: Path) -> None:
    out_dir = REPO_ROOT / "k8s" / config.stem
    fresh = render_files(load_config(config), source=config.name)
    assert out_dir.is_dir(), f"{out_dir.relative_to(REPO_ROOT)}/ is missing; {regenerate_hint(config)}"
    committed = {path.name: path.read_text() for path in out_dir.glob("*.yaml")}
    assert sorted(committed) == sorted(fresh), f"k8s/{config.stem}/ has other files; {regenerate_hint(config)}"
    for name, text in fresh.items():
        assert committed[name] == text, f"k8s/{config.stem}/{name} differs from a fresh render; " \
                                        f"{regenerate_hint(config)}"


def test_every_manifest_directory_has_its_config() -> None:
    for out_dir in sorted(p for p in (REPO_ROOT / "k8s").iterdir() if p.is_dir()):
        assert (REPO_ROOT / "configs" / f"{out_dir.name}.yaml").exists(), \
            f"k8s/{out_dir.name}/ has no configs/{out_dir.name}.yaml: remove it or add the config"


# --- every document passes --------------------------------------------------------------------------------------

@needs_crds
@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.relative_to(REPO_ROOT / "k8s")) for p in COMMITTED])
def test_committed_manifest_is_valid(checker: ManifestChecker, path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents, f"{path} holds no document"
    for doc in documents:
        assert checker.errors(doc) == [], path


@needs_crds
@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_fresh_render_is_valid(checker: ManifestChecker, config: Path) -> None:
    for name, text in render_files(load_config(config), source=config.name).items():
        for doc in yaml.safe_load_all(text):
            assert checker.errors(doc) == [], f"{config.name} -> {name}"


# --- the check bites ------------------------------------------------------------------------------------------

def broken(doc: dict[str, Any], path: tuple[Any, ...], value: Any = None, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


WORKER = ("spec", "rayClusterConfig", "workerGroupSpecs", 0)
CONTAINER = (*WORKER, "template", "spec", "containers", 0)


@needs_crds
@pytest.mark.parametrize(("path", "value", "delete", "expected"), [
    ((*WORKER, "replicaz"), 2, False, "replicaz"),                                 # unknown field
    ((*CONTAINER, "imagePullPolicyy"), "Always", False, "imagePullPolicyy"),      # unknown field, deep inside
    ((*WORKER, "maxReplicas"), "4", False, "is not of type 'integer'"),          # wrong type
    ((*WORKER, "minReplicas"), 2**31, False, "maximum"),                          # int32 overflow
    ((*CONTAINER, "resources", "limits", "cpu"), ["8"], False, "any of the given"),  # int-or-string, a list
    ((*WORKER, "groupName"), None, True, "'groupName' is a required property"),   # missing required field
    (("spec", "rayClusterConfig", "headGroupSpec"), None, True, "'headGroupSpec' is a required property"),
    (("metadata", "labels", "app.kubernetes.io/name"), 3, False, "labels"),       # metadata checked as ObjectMeta
], ids=["unknown-field", "unknown-container-field", "wrong-type", "int32-overflow", "int-or-string",
        "missing-required", "missing-head", "bad-metadata"])
def test_rayservice_check_rejects(checker: ManifestChecker, rayservice: dict[str, Any], path: tuple[Any, ...],
                                  value: Any, delete: bool, expected: str) -> None:
    errors = checker.errors(broken(rayservice, path, value, delete))
    assert any(expected in error for error in errors), errors


@needs_crds
def test_int_or_string_takes_both(checker: ManifestChecker, rayservice: dict[str, Any]) -> None:
    assert checker.errors(broken(rayservice, (*CONTAINER, "resources", "limits", "cpu"), 160)) == []


@needs_crds
def test_core_kinds_are_checked_strictly(checker: ManifestChecker) -> None:
    rendered = render(load_config(REPO_ROOT / "configs" / "local.yaml"))
    service, config_map = rendered["service.yaml"], rendered["configmap.yaml"]
    assert any("portz" in e for e in checker.errors(broken(service, ("spec", "portz"), [])))
    assert any("port" in e for e in checker.errors(broken(service, ("spec", "ports", 0, "port"), "http")))
    assert checker.errors(broken(config_map, ("data", "cluster.yaml"), {"not": "a string"}))


@needs_crds
def test_podmonitor_is_checked_against_its_crd(checker: ManifestChecker) -> None:
    monitor = render(load_config(REPO_ROOT / "configs" / "local.yaml"))["podmonitor.yaml"]
    assert checker.errors(monitor) == []
    assert any("'selector' is a required property" in e
               for e in checker.errors(broken(monitor, ("spec", "selector"), delete=True)))
    assert any("scrapeEvery" in e for e in checker.errors(broken(
        monitor, ("spec", "podMetricsEndpoints", 0, "scrapeEvery"), "15s")))
    assert checker.errors(broken(monitor, ("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds"))


@needs_crds
def test_a_kind_without_schema_fails(checker: ManifestChecker) -> None:
    unknown = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
               "spec": {"selector": {}}}
    assert any("no schema for ServiceMonitor" in e for e in checker.errors(unknown))
    assert checker.errors({"metadata": {"name": "no-kind"}})


@needs_crds
def test_kustomization_is_checked(checker: ManifestChecker) -> None:
    text = render_files(load_config(REPO_ROOT / "configs" / "local.yaml"), source="local.yaml")["kustomization.yaml"]
    kustomization = yaml.safe_load(text)
    assert checker.errors(kustomization) == []
    assert checker.errors({**kustomization, "commonLabelz": {}})
    assert checker.errors({**kustomization, "resources": []})


def test_crd_conversion_rejects_unknown_fields_unless_preserved() -> None:
    crd_schema = {"type": "object", "properties": {
        "strict": {"type": "object", "properties": {"a": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
        "quantity": {"x-kubernetes-int-or-string": True},
        "count": {"type": "integer", "format": "int32", "nullable": True},
    }}
    validator = jsonschema.Draft202012Validator(crd_to_json_schema(crd_schema))
    assert validator.is_valid({"strict": {"a": "x"}, "open": {"anything": 1}, "quantity": "1Gi", "count": None})
    assert validator.is_valid({"quantity": 3, "count": 7})
    assert not validator.is_valid({"strict": {"b": "x"}})
    assert not validator.is_valid({"extra": 1})
    assert not validator.is_valid({"quantity": [1]})
    assert not validator.is_valid({"count": 2**31})
