"""Replica placement for GPU and CPU shapes, and the Serve options the builder derives from a model."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.builder import autoscaling_options, model_deployment_name
from serve_app.config import ModelConfig
from serve_app.placement import rank_cores, replica_placement
from serve_app.vllm_adapter import executor_backend


def model(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "source": "org/m", **fields})


def gpu(tensor: int, pipeline: int = 1, **resources: Any) -> ModelConfig:
    return model(parallelism={"tensor": tensor, "pipeline": pipeline},
                 resources={"device": "gpu", "accelerator": "H100", **resources})


def test_tp8_is_one_gpu_bundle_per_worker_packed() -> None:
    placement = replica_placement(gpu(8))
    bundles = placement.placement_group_bundles
    assert len(bundles) == 8 and all(b["GPU"] == 1 for b in bundles)
    assert all(b["accelerator_type:H100"] > 0 for b in bundles)
    assert placement.placement_group_strategy == "PACK"
    assert executor_backend("gpu", 8) == "ray"


def test_deepseek_shape_tp8_pp2_needs_sixteen_gpus_that_may_span_nodes() -> None:
    placement = replica_placement(gpu(8, 2))
    assert sum(b["GPU"] for b in placement.placement_group_bundles) == 16
    # PACK (not STRICT_PACK) lets the group spill onto a second 8-GPU node.
    assert placement.placement_group_strategy == "PACK"


def test_replica_actor_shares_the_first_bundle_and_takes_no_gpu() -> None:
    placement = replica_placement(gpu(4))
    assert placement.ray_actor_options["num_gpus"] == 0
    first, rest = placement.placement_group_bundles[0], placement.placement_group_bundles[1:]
    assert first["CPU"] == rest[0]["CPU"] + placement.ray_actor_options["num_cpus"]


def test_tp4_on_a_node_pool_pins_every_bundle_to_the_pool() -> None:
    placement = replica_placement(gpu(4, node_pool="h100-pool", placement_strategy="STRICT_PACK"))
    assert all(b["node_pool:h100-pool"] > 0 for b in placement.placement_group_bundles)
    assert placement.placement_group_strategy == "STRICT_PACK"
    options = placement.deployment_options()
    assert options["placement_group_strategy"] == "STRICT_PACK" and len(options["placement_group_bundles"]) == 4


def test_cpu_replica_reserves_cores_for_all_ranks_and_uses_processes() -> None:
    cpu_tp2 = model(parallelism={"tensor": 2}, resources={"device": "cpu", "node_pool": "cpu-pool"})
    placement = replica_placement(cpu_tp2)
    assert placement.placement_group_bundles is None
    assert placement.ray_actor_options["num_cpus"] == 2
    assert placement.ray_actor_options["resources"] == {"node_pool:cpu-pool": pytest.approx(0.001)}
    assert executor_backend("cpu", cpu_tp2.parallelism.world_size) == "mp"
    assert executor_backend("cpu", model().parallelism.world_size) is None


@pytest.mark.parametrize("world, per_worker, cores, expected", [
    (2, 1, [0, 1], ((0,), (1,))),
    (2, 0.5, [4, 5, 6], ((4,), (5,))),
    (2, 2, [0, 1, 2, 3], ((0, 1), (2, 3))),
    (1, 1, [3], ((3,),)),
])
def test_cpu_ranks_take_disjoint_cores_from_the_allowed_set(world: int, per_worker: float, cores: list[int],
                                                            expected: tuple[tuple[int, ...], ...]) -> None:
    assert rank_cores(world, per_worker, cores) == expected


def test_cpu_ranks_refuse_more_ranks_than_cores() -> None:
    with pytest.raises(ValueError, match="need 4 cores"):
        rank_cores(4, 1, [0, 1])


def test_autoscaling_options_carry_the_config() -> None:
    scaling = {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 2, "upscale_delay_s": 1,
               "downscale_delay_s": 5, "look_back_period_s": 2}
    options = autoscaling_options(model(autoscaling=scaling))
    assert options["autoscaling_config"] == {**scaling, "initial_replicas": None}
    fixed = autoscaling_options(model(autoscaling={"min_replicas": 2, "max_replicas": 2}))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed


def test_deployment_names_are_safe_for_any_model_name() -> None:
    assert model_deployment_name(model(name="Qwen/Qwen2.5-32B")) == "model-Qwen-Qwen2.5-32B"
