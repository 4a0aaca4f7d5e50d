"""What `llmcluster render k8s` produces: the Serve application, node pools, autoscaling bounds, files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from typer.testing import CliRunner

from cluster import kuberay
from cluster.cli import app
from cluster.k8s_render import render, render_files, serve_config_v2, write_files
from cluster.node_pools import resolve_pools
from serve_app.config import ClusterConfig, load_config, parse_config
from serve_app.kubernetes_config import IMAGE_VERSION, KubernetesConfig
from serve_app.placement import replica_placement
from tests.conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def example(name: str) -> ClusterConfig:
    return load_config(REPO_ROOT / "configs" / f"{name}.yaml")


def cluster_spec(rendered: dict[str, Any], kind: str = "rayservice.yaml") -> dict[str, Any]:
    spec = rendered[kind]["spec"]
    return spec.get("rayClusterConfig") or spec["rayClusterSpec"]


def container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


# --- the Serve application is the one `llmcluster serve` deploys -------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_serve_config_v2_parses_and_round_trips(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = load_config(path)
    embedded = yaml.safe_load(render(config)["rayservice.yaml"]["spec"]["serveConfigV2"])
    assert embedded == serve_config_v2(config)
    schema = ServeDeploySchema.model_validate(embedded)
    (application,) = schema.applications
    assert (application.name, application.import_path, application.route_prefix) == (
        config.cluster.name, "serve_app.builder:build_app", "/")
    expected = config.model_copy(update={"router": config.router.model_copy(update={"host": "0.0.0.0"}),
                                         "kubernetes": KubernetesConfig()})
    assert parse_config(application.args["config"]) == expected
    assert schema.http_options.port == kuberay.SERVE_PORT


def test_pod_settings_stay_out_of_the_serve_application() -> None:
    config = example("production")
    changed = config.model_copy(update={"kubernetes": config.kubernetes.model_copy(update={"image": "other:1"})})
    assert serve_config_v2(changed) == serve_config_v2(config)


# --- DeepSeek-V3: one replica spans two 8-GPU nodes ----------------------------------------------------------

def test_deepseek_worker_group_spans_two_nodes_per_replica() -> None:
    config = example("deepseek-v3")
    (group,) = cluster_spec(render(config))["workerGroupSpecs"]
    model = config.models[0]
    assert model.parallelism.world_size == 16
    assert group["groupName"] == "h100"
    assert container(group)["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (
        2 * model.autoscaling.min_replicas, 2, 2 * model.autoscaling.max_replicas)
    spec = group["template"]["spec"]
    assert spec["nodeSelector"] == {"karpenter.k8s.aws/instance-gpu-name": "h100",
                                    "node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def ray_autoscaler_view(spec: dict[str, Any]) -> dict[str, Any]:
    """The node types Ray's own autoscaler derives from a RayCluster spec, as it does in the head pod."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"metadata": {"name": "rendered", "namespace": "default"}, "spec": spec}
    return _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]


def fits(bundles: list[dict[str, float]], node: dict[str, float], nodes: int) -> bool:
    """First-fit of placement-group bundles into `nodes` nodes of one type (what PACK aims for)."""
    free = [dict(node) for _ in range(nodes)]
    for bundle in bundles:
        target = next((f for f in free if all(f.get(k, 0) >= v for k, v in bundle.items())), None)
        if target is None:
            return False
        for key, amount in bundle.items():
            target[key] -= amount
    return True


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_ray_autoscaler_reads_the_rendered_cluster(path: Path) -> None:
    config = load_config(path)
    types = ray_autoscaler_view(cluster_spec(render(config)))
    assert types.pop("headgroup")["resources"].get("GPU", 0) == 0
    pools = resolve_pools(config)
    for pool, node in types.items():
        hosted = [m for m in config.models if pools[m.name].name == pool]
        assert hosted, f"worker group {pool} hosts no model"
        gpus = node["resources"].get("GPU", 0)
        for model in hosted:
            placement = replica_placement(model)
            # A data-parallel replica is a gang: its Serve replicas' bundles are placed as one group.
            bundles = (placement.placement_group_bundles or [
                {"CPU": placement.ray_actor_options["num_cpus"], **placement.ray_actor_options["resources"]}]
            ) * placement.gang_size
            assert fits(bundles, node["resources"], -(-model.parallelism.workers // gpus) if gpus else 1)
        wanted = sum(m.autoscaling.max_replicas * m.parallelism.workers for m in hosted)
        assert node["max_workers"] * (gpus or node["resources"]["CPU"]) >= wanted


def test_deepseek_replica_needs_both_nodes() -> None:
    config = example("deepseek-v3")
    node = ray_autoscaler_view(cluster_spec(render(config)))["h100"]
    assert node["resources"]["GPU"] == 8 and node["resources"]["node_pool:h100"] == 1000
    assert node["resources"]["accelerator_type:H100"] == 1
    bundles = replica_placement(config.models[0]).placement_group_bundles
    assert not fits(bundles, node["resources"], 1)
    assert fits(bundles, node["resources"], 2)
    assert (node["min_workers"], node["max_workers"]) == (2, 4)


def test_production_pool_is_sized_from_both_models() -> None:
    (group,) = cluster_spec(render(example("production")))["workerGroupSpecs"]
    # min: one TP 4 and one TP 8 replica pack into 12 GPUs -> 2 nodes; max: 4 x TP 4 (2 nodes) + 4 x TP 8 (4).
    assert (group["minReplicas"], group["maxReplicas"]) == (2, 6)
    assert group["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"


def test_head_schedules_no_model_and_autoscaling_is_on() -> None:
    for path in CONFIGS:
        config = load_config(path)
        spec = cluster_spec(render(config))
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
        assert spec["enableInTreeAutoscaling"] is True
        assert "nvidia.com/gpu" not in container(spec["headGroupSpec"])["resources"]["limits"]
        assert render(config)["rayservice.yaml"]["spec"]["upgradeStrategy"]["type"] == "NewCluster"


def test_cpu_config_renders_a_cpu_pool() -> None:
    rendered = render(example("local"))
    (group,) = cluster_spec(rendered)["workerGroupSpecs"]
    assert group["groupName"] == "cpu"
    assert "nvidia.com/gpu" not in container(group)["resources"]["limits"]
    assert "tolerations" not in group["template"]["spec"]
    assert container(group)["image"].endswith("-cpu")


def test_pods_get_volumes_secrets_and_the_config() -> None:
    rendered = render(example("production"))
    for group in [cluster_spec(rendered)["headGroupSpec"], *cluster_spec(rendered)["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "production-model-cache"
        env = {e["name"]: e for e in container(group)["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token", "optional": True}
        assert env["LLMCLUSTER_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "llmcluster-api-keys"
    assert rendered["pvc.yaml"]["spec"]["storageClassName"] == "standard-rwx"


def test_service_reaches_serve_on_ready_heads() -> None:
    config = example("production")
    rendered = render(config)
    service = rendered["service.yaml"]["spec"]
    assert service["selector"][kuberay.SERVE_READY_LABEL] == "true"
    assert service["ports"] == [{"name": "http", "port": config.router.port, "protocol": "TCP", "targetPort": "serve"}]
    head = cluster_spec(rendered)["headGroupSpec"]
    assert {"name": "serve", "containerPort": kuberay.SERVE_PORT} in container(head)["ports"]
    labels = head["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["selector"].items() if k != kuberay.SERVE_READY_LABEL)


def test_podmonitor_scrapes_a_port_every_ray_pod_has() -> None:
    rendered = render(example("production"))
    endpoint = rendered["podmonitor.yaml"]["spec"]["podMetricsEndpoints"][0]
    for kind in ("rayservice.yaml", "rayjob.yaml"):
        spec = cluster_spec(rendered, kind)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert endpoint["port"] in {p["name"] for p in container(group)["ports"]}
            labels = group["template"]["metadata"]["labels"]
            assert rendered["podmonitor.yaml"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_batch_job_runs_llmcluster_batch_on_the_mounted_config() -> None:
    config = example("production")
    rendered = render(config)
    job = rendered["rayjob.yaml"]["spec"]
    assert job["entrypoint"].startswith(
        f"llmcluster batch /etc/llmcluster/cluster.yaml --model {config.models[0].name} --input ")
    assert job["suspend"] is True and job["shutdownAfterJobFinishes"] is True
    (group,) = job["rayClusterSpec"]["workerGroupSpecs"]
    assert group["minReplicas"] == 0
    mounted = parse_config(yaml.safe_load(rendered["configmap.yaml"]["data"]["cluster.yaml"]))
    assert mounted.models == config.models and mounted.kubernetes == config.kubernetes
    assert "LLMCLUSTER_API_KEYS" not in {e["name"] for e in container(group)["env"]}


# --- files, command, pins -------------------------------------------------------------------------------------

def test_render_is_deterministic_and_lists_every_file() -> None:
    config = example("deepseek-v3")
    first, second = render_files(config, "deepseek-v3.yaml"), render_files(config, "deepseek-v3.yaml")
    assert first == second
    kustomization = yaml.safe_load(first["kustomization.yaml"])
    assert kustomization["resources"] == [name for name in first if name != "kustomization.yaml"]
    assert not any(re.search(r"\d{4}-\d{2}-\d{2}T", text) for text in first.values())


def test_command_writes_manifests_to_the_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.yaml").write_text((REPO_ROOT / "configs" / "local.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["render", "k8s", "mine.yaml"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "k8s" / "mine").iterdir())
    assert written == sorted(render_files(load_config("mine.yaml"), "mine.yaml"))


def test_command_reports_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "m", "source": "org/m"}],
                                   "kubernetes": {"node_pools": [{"name": "a", "gpus": 8}]}}))
    result = CliRunner().invoke(app, ["render", "k8s", str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "kubernetes.node_pools.0.gpus" in result.output and "gpus_per_node" in result.output


def test_rewrite_removes_stale_manifests_only(tmp_path: Path) -> None:
    (tmp_path / "pvc.yaml").write_text("# Rendered from old.yaml by `llmcluster render k8s`\n")
    (tmp_path / "mine.yaml").write_text("kind: ConfigMap\n")
    write_files({"service.yaml": "# Rendered from x\n"}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml", "service.yaml"]


def test_image_version_and_upgrade_strategies_agree() -> None:
    # Ray, vLLM and torch pins: tests/unit/test_pins.py.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert IMAGE_VERSION == project["version"]
    strategies = get_args(KubernetesConfig.model_fields["upgrade_strategy"].annotation)
    assert strategies == kuberay.UPGRADE_STRATEGIES
