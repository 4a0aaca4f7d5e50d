"""Kubernetes render of the security pieces: the API keys Secret mount and the NetworkPolicy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster import kuberay
from cluster.cli import app
from cluster.k8s_pods import common_labels
from cluster.k8s_render import render, render_files
from serve_app.config import ClusterConfig, ConfigError, load_config
from tests.conftest import REPO_ROOT
from tests.k8s_schemas import ManifestChecker, needs_crds, pod_templates


def with_keys_file(name: str, keys_file: str | None) -> ClusterConfig:
    config = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    auth = config.router.auth.model_copy(update={"keys_file": keys_file})
    return config.model_copy(update={"router": config.router.model_copy(update={"auth": auth})})


def templates(rendered: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(pod_templates(rendered[kind]))


def keys_mounts(template: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volumes carrying the keys Secret and the mounts of those volumes."""
    spec = template["spec"]
    volumes = [v for v in spec["volumes"] if "secret" in v or "projected" in v]
    names = {v["name"] for v in volumes}
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] in names]
    return volumes, mounts


@pytest.fixture(scope="module")
def checker() -> ManifestChecker:
    return ManifestChecker.load()


# --- the API keys Secret ----------------------------------------------------------------------------------------

def test_every_serving_pod_mounts_the_keys_secret_at_the_keys_file_directory() -> None:
    config = with_keys_file("production", "/etc/llmcluster-keys/tenants.yaml")
    rendered = render(config)
    serving = templates(rendered, "rayservice.yaml")
    assert len(serving) == 1 + len(rendered["rayservice.yaml"]["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    for template in serving:
        volumes, mounts = keys_mounts(template)
        assert volumes == [{"name": "api-keys", "secret": {
            "secretName": "production-api-keys", "optional": False,
            "items": [{"key": "keys.yaml", "path": "tenants.yaml"}]}}]
        assert mounts == [{"name": "api-keys", "mountPath": "/etc/llmcluster-keys", "readOnly": True}]


def test_batch_pods_get_no_keys() -> None:
    rendered = render(with_keys_file("production", "/etc/llmcluster-keys/keys.yaml"))
    for template in templates(rendered, "rayjob.yaml"):
        assert keys_mounts(template) == ([], [])


def test_keys_file_beside_the_config_shares_its_mount() -> None:
    rendered = render(with_keys_file("local", "/etc/llmcluster/keys.yaml"))
    for template in templates(rendered, "rayservice.yaml"):
        volumes, mounts = keys_mounts(template)
        assert volumes == [{"name": "cluster-config", "projected": {"sources": [
            {"configMap": {"name": "llmcluster-config"}},
            {"secret": {"name": "llmcluster-api-keys", "optional": False,
                        "items": [{"key": "keys.yaml", "path": "keys.yaml"}]}}]}}]
        assert mounts == [{"name": "cluster-config", "mountPath": "/etc/llmcluster", "readOnly": True}]


def test_no_keys_file_no_secret_and_the_secret_is_never_rendered() -> None:
    plain = render(with_keys_file("production", None))
    for template in templates(plain, "rayservice.yaml"):
        assert keys_mounts(template) == ([], [])
    keyed = render(with_keys_file("production", "/etc/llmcluster-keys/keys.yaml"))
    assert not [name for name, obj in keyed.items() if obj.get("kind") == "Secret"]


@pytest.mark.parametrize(("keys_file", "expected"), [
    ("keys.yaml", "absolute"),
    ("/etc/keys.yaml", "top-level"),
    ("/etc/llmcluster/cluster.yaml", "the config's own file"),
    ("/etc/llmcluster/sub/keys.yaml", "overlaps the volume mounted at /etc/llmcluster"),
    ("/models/keys/keys.yaml", "overlaps the volume mounted at /models"),
], ids=["relative", "top-level", "config-file", "inside-config-dir", "inside-cache"])
def test_a_keys_file_no_secret_can_be_mounted_for_is_refused(keys_file: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="router.auth.keys_file") as caught:
        render(with_keys_file("local", keys_file))
    assert expected in str(caught.value)


def test_render_command_says_how_to_create_the_secret(tmp_path: Path) -> None:
    config = tmp_path / "keyed.yaml"
    data = yaml.safe_load((REPO_ROOT / "configs" / "local.yaml").read_text())
    data["router"]["auth"] = {"keys_file": "/etc/llmcluster-keys/keys.yaml"}
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["render", "k8s", str(config), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert ("kubectl create secret generic llmcluster-api-keys --namespace default "
            "--from-file=keys.yaml=PATH/TO/keys.yaml") in result.output


@needs_crds
@pytest.mark.parametrize("keys_file", ["/etc/llmcluster-keys/keys.yaml", "/etc/llmcluster/keys.yaml"])
def test_keyed_manifests_pass_the_schema_checks(checker: ManifestChecker, keys_file: str) -> None:
    for name, text in render_files(with_keys_file("production", keys_file), "production.yaml").items():
        for doc in yaml.safe_load_all(text):
            assert checker.errors(doc) == [], name


# --- the NetworkPolicy ------------------------------------------------------------------------------------------

def ingress_rules(rendered: dict[str, Any]) -> list[dict[str, Any]]:
    return rendered["networkpolicy.yaml"]["spec"]["ingress"]


def ports_of(rule: dict[str, Any]) -> set[int]:
    return {port["port"] for port in rule.get("ports", [])}


def test_network_policy_selects_every_pod_of_the_cluster() -> None:
    config = with_keys_file("production", None)
    rendered = render(config)
    policy = rendered["networkpolicy.yaml"]
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == common_labels(config)
    for kind in ("rayservice.yaml", "rayjob.yaml"):
        for template in templates(rendered, kind):
            assert selector.items() <= template["metadata"]["labels"].items()
    assert "networkpolicy.yaml" in yaml.safe_load(render_files(config, "p.yaml")["kustomization.yaml"])["resources"]


def test_only_the_serve_port_is_open_to_anyone_and_the_cluster_reaches_every_port() -> None:
    config = with_keys_file("production", None)
    rules = ingress_rules(render(config))
    open_to_all = [rule for rule in rules if "from" not in rule]
    assert [ports_of(rule) for rule in open_to_all] == [{kuberay.SERVE_PORT}]
    own = [rule for rule in rules if rule.get("from") == [{"podSelector": {"matchLabels": common_labels(config)}}]]
    assert own and "ports" not in own[0]


def test_dashboard_is_reachable_by_kuberay_and_the_batch_submitter_only() -> None:
    (rule,) = [r for r in ingress_rules(render(with_keys_file("production", None))) if kuberay.DASHBOARD_PORT in
               ports_of(r)]
    assert ports_of(rule) == {kuberay.DASHBOARD_PORT}
    assert rule["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}}},
        {"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": "production-batch"}}},
    ]


def test_the_port_the_podmonitor_scrapes_is_open_inside_the_kubernetes_cluster_only() -> None:
    config = with_keys_file("production", None)
    rendered = render(config)
    scraped = rendered["podmonitor.yaml"]["spec"]["podMetricsEndpoints"][0]["port"]
    for template in templates(rendered, "rayservice.yaml"):
        number = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}[scraped]
        (rule,) = [r for r in ingress_rules(rendered) if number in ports_of(r)]
        assert rule["from"] == [{"namespaceSelector": {}}]
    unmonitored = config.model_copy(update={"kubernetes": config.kubernetes.model_copy(update={"monitoring": False})})
    assert not [r for r in ingress_rules(render(unmonitored)) if kuberay.METRICS_PORT in ports_of(r)]


@needs_crds
def test_network_policy_is_checked_strictly(checker: ManifestChecker) -> None:
    policy = render(with_keys_file("local", None))["networkpolicy.yaml"]
    assert checker.errors(policy) == []
    assert any("podSelectorr" in e for e in checker.errors({**policy, "spec": {**policy["spec"], "podSelectorr": {}}}))
    bad_port = {**policy, "spec": {**policy["spec"], "ingress": [{"ports": [{"portz": 8000}]}]}}
    assert any("portz" in e for e in checker.errors(bad_port))
