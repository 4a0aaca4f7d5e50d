"""Node pools for Kubernetes: which pool hosts each model, how many nodes it needs, and its cloud labels."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.cloud_presets import PresetError, pool_node_selector, pool_tolerations
from cluster.node_pools import PoolError, nodes_per_replica, plan_pools, replicas_per_node, resolve_pools
from serve_app.config import ConfigError, ModelConfig, parse_config
from serve_app.kubernetes_config import NodePoolConfig

H100 = {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus": 96, "memory": "1000Gi"}
CPU_POOL = {"name": "cpu", "gpus_per_node": 0, "cpus": 8, "memory": "32Gi"}


def gpu_model(name: str = "m", tensor: int = 1, pipeline: int = 1, pool: str | None = None,
              replicas: tuple[int, int] = (1, 1), **resources: Any) -> dict[str, Any]:
    return {"name": name, "source": "org/model", "parallelism": {"tensor": tensor, "pipeline": pipeline},
            "resources": {"device": "gpu", "accelerator": "H100", "node_pool": pool, **resources},
            "autoscaling": {"min_replicas": replicas[0], "max_replicas": replicas[1]}}


def cluster(*models: dict[str, Any], pools: tuple[dict[str, Any], ...] = (H100,), **kubernetes: Any):
    return parse_config({"models": list(models), "kubernetes": {"node_pools": list(pools), **kubernetes}})


def pool_error(config) -> str:
    with pytest.raises(PoolError) as caught:
        plan_pools(config)
    return str(caught.value)


# --- sizing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tensor", "pipeline", "per_node", "nodes_each"), [
    (1, 1, 8, 1), (2, 1, 4, 1), (4, 1, 2, 1), (8, 1, 1, 1), (8, 2, 0, 2), (12, 1, 0, 2), (16, 2, 0, 4)])
def test_replica_shape_on_8_gpu_nodes(tensor: int, pipeline: int, per_node: int, nodes_each: int) -> None:
    model = ModelConfig.model_validate(gpu_model(tensor=tensor, pipeline=pipeline))
    pool = NodePoolConfig.model_validate(H100)
    assert replicas_per_node(model, pool) == per_node
    assert nodes_per_replica(model, pool) == nodes_each


def test_cpus_bound_replicas_per_node() -> None:
    model = ModelConfig.model_validate(gpu_model(tensor=1, cpus_per_worker=20))
    assert replicas_per_node(model, NodePoolConfig.model_validate(H100)) == 4  # 96 // (20 + 1), not 8 GPUs


def test_tp8_pp2_pool_takes_two_nodes_per_replica() -> None:
    (plan,) = plan_pools(cluster(gpu_model(tensor=8, pipeline=2, pool="h100", replicas=(1, 3))))
    assert (plan.min_nodes, plan.initial_nodes, plan.max_nodes) == (2, 2, 6)


def test_small_replicas_pack_for_min_and_stay_apart_for_max() -> None:
    config = cluster(gpu_model("a", tensor=4, pool="h100", replicas=(1, 4)),
                     gpu_model("b", tensor=2, pool="h100", replicas=(2, 3)))
    (plan,) = plan_pools(config)
    assert plan.models == ("a", "b")
    assert plan.min_nodes == 1            # 4 + 2 x 2 = 8 GPUs
    assert plan.max_nodes == 2 + 1        # 4 x TP4 on 2 nodes, 3 x TP2 on 1 node


def test_scale_to_zero_pool_starts_empty() -> None:
    (plan,) = plan_pools(cluster(gpu_model(tensor=8, pool="h100", replicas=(0, 2))))
    assert (plan.min_nodes, plan.initial_nodes, plan.max_nodes) == (0, 0, 2)


def test_declared_node_counts_override() -> None:
    (plan,) = plan_pools(cluster(gpu_model(pool="h100"), pools=({**H100, "min_nodes": 1, "max_nodes": 10},)))
    assert (plan.min_nodes, plan.max_nodes) == (1, 10)
    assert "exceeds max_nodes" in pool_error(cluster(gpu_model(pool="h100", replicas=(3, 3)),
                                                     gpu_model("big", tensor=8, pipeline=2, pool="h100"),
                                                     pools=({**H100, "max_nodes": 1},)))


# --- which pool ----------------------------------------------------------------------------------------------

def test_pools_are_derived_when_none_is_declared() -> None:
    config = parse_config({"models": [
        {"name": "g", "source": "org/g", "resources": {"device": "gpu", "accelerator": "A100-80G"}},
        {"name": "c", "source": "org/c", "parallelism": {"tensor": 2}, "resources": {"cpus_per_worker": 2}}]})
    pools = resolve_pools(config)
    assert (pools["g"].name, pools["g"].gpus_per_node, pools["g"].accelerator) == ("gpu-a100-80g", 8, "A100-80G")
    assert (pools["c"].name, pools["c"].gpus_per_node, pools["c"].cpus) == ("cpu", 0, 4)


def test_unpinned_model_goes_to_the_one_fitting_pool() -> None:
    config = cluster(gpu_model(), {"name": "c", "source": "org/c"}, pools=(H100, CPU_POOL))
    assert {name: pool.name for name, pool in resolve_pools(config).items()} == {"m": "h100", "c": "cpu"}


@pytest.mark.parametrize(("models", "pools", "expected"), [
    ([gpu_model(pool="a100")], (H100,), "'a100' is not among kubernetes.node_pools (h100)"),
    ([gpu_model()], (H100, {**H100, "name": "h100-spot"}), "set resources.node_pool"),
    ([gpu_model()], (CPU_POOL,), "0 node pools fit"),
    ([gpu_model(pool="cpu")], (H100, CPU_POOL), "does not match node pool cpu"),
    ([gpu_model(tensor=8, pipeline=2, pool="h100", placement_strategy="STRICT_PACK")], (H100,), "STRICT_PACK"),
    ([gpu_model(pool="h100", cpus_per_worker=200)], (H100,), "raise the pool's cpus"),
])
def test_impossible_placements_name_the_fix(models: list[dict[str, Any]], pools: tuple[dict[str, Any], ...],
                                            expected: str) -> None:
    assert expected in pool_error(cluster(*models, pools=pools))


# --- cloud labels and taints ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("cloud", "label", "value"), [
    ("gke", "cloud.google.com/gke-accelerator", "nvidia-h100-80gb"),
    ("eks", "karpenter.k8s.aws/instance-gpu-name", "h100"),
    ("aks", "kubernetes.azure.com/accelerator", "nvidia"),
])
def test_cloud_presets_label_gpu_pools(cloud: str, label: str, value: str) -> None:
    pool = NodePoolConfig.model_validate(H100)
    assert pool_node_selector(cloud, pool) == {label: value}
    assert any(t.key == "nvidia.com/gpu" for t in pool_tolerations(cloud, pool))


def test_aks_tolerates_its_gpu_sku_taint() -> None:
    keys = {(t.key, t.value) for t in pool_tolerations("aks", NodePoolConfig.model_validate(H100))}
    assert ("sku", "gpu") in keys


def test_own_labels_and_tolerations_win() -> None:
    pool = NodePoolConfig.model_validate({
        **H100, "instance_type": "a3-highgpu-8g",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-mega-80gb", "team": "llm"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm"}]})
    assert pool_node_selector("gke", pool) == {"cloud.google.com/gke-accelerator": "nvidia-h100-mega-80gb",
                                               "node.kubernetes.io/instance-type": "a3-highgpu-8g", "team": "llm"}
    assert [t.key for t in pool_tolerations("gke", pool)] == ["nvidia.com/gpu", "dedicated"]


def test_unknown_accelerator_asks_for_the_label_value() -> None:
    pool = NodePoolConfig.model_validate({**H100, "accelerator": "MI300X"})
    with pytest.raises(PresetError, match="set accelerator_label"):
        pool_node_selector("gke", pool)
    assert pool_node_selector("none", pool) == {}
    labelled = NodePoolConfig.model_validate({**H100, "accelerator": "MI300X", "accelerator_label": "amd-mi300x"})
    assert pool_node_selector("gke", labelled) == {"cloud.google.com/gke-accelerator": "amd-mi300x"}


def test_cpu_pools_get_no_gpu_labels_or_tolerations() -> None:
    pool = NodePoolConfig.model_validate(CPU_POOL)
    assert pool_node_selector("gke", pool) == {} and pool_tolerations("gke", pool) == ()


# --- the kubernetes section is checked like the rest of the config ----------------------------------------------

@pytest.mark.parametrize(("kubernetes", "expected"), [
    ({"node_pools": [{**H100, "gpus": 8}]}, "kubernetes.node_pools.0.gpus: unknown field; allowed here: name"),
    ({"head": {"cpu": 4}}, "allowed here: cpus, memory"),
    ({"cloud": "gcp"}, "kubernetes.cloud"),
    ({"node_pools": [H100, H100]}, "repeated: h100"),
    ({"node_pools": [{**H100, "gpus_per_node": 0}]}, "accelerator needs gpus_per_node > 0"),
    ({"node_pools": [{**H100, "min_nodes": 3, "max_nodes": 2}]}, "min_nodes must be <= max_nodes"),
    ({"node_pools": [{**H100, "memory": "lots"}]}, "kubernetes.node_pools.0.memory"),
    ({"model_cache": {"storage_class": "fast"}}, "only allowed with volume: pvc"),
    ({"head": {"tolerations": [{"key": "k", "value": "v"}]}}, "operator Equal"),
    ({"upgrade_strategy": "NewClusterWithIncrementalUpgrade"}, "kubernetes.upgrade_strategy"),
])
def test_bad_kubernetes_settings_name_the_field(kubernetes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": [{"name": "m", "source": "org/m"}], "kubernetes": kubernetes})
    assert expected in str(caught.value)
