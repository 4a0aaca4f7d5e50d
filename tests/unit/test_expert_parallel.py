"""Data-parallel attention with expert parallelism: the config's rules, the gang placement, the engine arguments."""

from __future__ import annotations

from typing import Any

import pytest
from ray import serve

from serve_app.builder import autoscaling_options
from serve_app.config import ConfigError, ModelConfig, parse_config
from serve_app.data_parallel import DataParallelRank, rank_bundles
from serve_app.llm_server import LLMServer, engine_spec
from serve_app.placement import replica_cpus, replica_gpus, replica_placement
from serve_app.vllm_adapter import BUNDLES_ENV, engine_kwargs, rank_bundles_env, vllm_engine_arg_names


def model(parallelism: dict[str, Any], device: str = "gpu", **fields: Any) -> ModelConfig:
    resources = {"device": device, **fields.pop("resources", {})}
    return ModelConfig.model_validate({"name": "m", "source": "org/m", "parallelism": parallelism,
                                       "resources": resources, **fields})


def wide_ep(**fields: Any) -> ModelConfig:
    """DeepSeek-V3's wide expert parallelism: 16 ranks of one GPU each, experts spread over all 16."""
    return model({"data": 16, "expert": True}, resources={"accelerator": "H100", "cpus_per_worker": 4}, **fields)


def config_error(parallelism: dict[str, Any], **resources: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": [{"name": "m", "source": "org/m", "parallelism": parallelism,
                                  "resources": {"device": "gpu", **resources}}]})
    return str(caught.value)


# --- config ----------------------------------------------------------------------------------------------------

def test_wide_ep_counts_every_rank_as_a_worker_of_one_replica() -> None:
    parallelism = wide_ep().parallelism
    assert (parallelism.world_size, parallelism.workers) == (1, 16)
    assert model({"tensor": 8, "pipeline": 2}).parallelism.workers == 16


def test_data_parallel_without_experts_is_refused_naming_the_fields() -> None:
    message = config_error({"data": 2})
    assert "models.0: parallelism.data > 1 needs parallelism.expert: true" in message
    assert "autoscaling.max_replicas" in message


@pytest.mark.parametrize("parallelism", [{"expert": True}, {"data": 2, "expert": True}])
def test_expert_parallelism_on_cpu_is_refused_with_vllms_reason(parallelism: dict[str, Any]) -> None:
    message = config_error(parallelism, device="cpu")
    assert "parallelism.expert needs resources.device: gpu" in message and "CPU MoE kernel" in message


def test_a_data_parallel_group_cannot_be_strictly_packed() -> None:
    message = config_error({"data": 2, "expert": True}, placement_strategy="STRICT_PACK")
    assert "resources.placement_strategy STRICT_PACK" in message


@pytest.mark.parametrize("argument, field", [
    ("enable_expert_parallel", "parallelism.expert"), ("data_parallel_size", "parallelism.data"),
    ("data_parallel_rank", "parallelism.data"), ("data_parallel_address", "parallelism.data"),
    ("data_parallel_backend", "parallelism.data")])
def test_engine_arguments_of_data_and_expert_parallelism_belong_to_the_parallelism_section(
        argument: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"engine.{argument} is set by the model's `{field}`"):
        parse_config({"models": [{"name": "m", "source": "org/m", "engine": {argument: 1}}]})


# --- placement ---------------------------------------------------------------------------------------------------

def test_wide_ep_is_a_gang_of_sixteen_one_gpu_replicas() -> None:
    placement = replica_placement(wide_ep())
    options = placement.deployment_options()
    (bundle,) = options["placement_group_bundles"]  # one Serve replica: one rank of one GPU
    assert bundle == {"GPU": 1.0, "CPU": 5.0, "accelerator_type:H100": pytest.approx(0.001)}
    assert options["gang_scheduling_config"] == {"gang_size": 16, "gang_placement_strategy": "PACK"}
    assert "placement_group_strategy" not in options
    assert (replica_gpus(wide_ep()), replica_cpus(wide_ep())) == (16, 16 * 4 + 16)


def test_expert_parallel_over_tensor_ranks_is_one_ordinary_replica() -> None:
    options = replica_placement(model({"tensor": 8, "expert": True})).deployment_options()
    assert len(options["placement_group_bundles"]) == 8 and options["placement_group_strategy"] == "PACK"
    assert "gang_scheduling_config" not in options


def test_autoscaling_counts_model_replicas_and_serve_counts_ranks() -> None:
    scaling = autoscaling_options(wide_ep(autoscaling={"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1}))
    config = scaling["autoscaling_config"]
    assert (config["min_replicas"], config["max_replicas"], config["initial_replicas"]) == (16, 32, 16)
    assert autoscaling_options(wide_ep())["num_replicas"] == 16


def test_serve_accepts_the_gang_options_the_builder_gives() -> None:
    # Serve's own validation: a gang size that does not divide the replica count, or a per-replica strategy
    # beside the gang's, raises here.
    ranks = wide_ep(autoscaling={"min_replicas": 1, "max_replicas": 2})
    options = {**autoscaling_options(ranks), **replica_placement(ranks).deployment_options()}
    deployment = serve.deployment(LLMServer).options(name="model-m", **options)
    gang = deployment._deployment_config.gang_scheduling_config
    assert (gang.gang_size, gang.gang_placement_strategy.value) == (16, "PACK")
    assert deployment._deployment_config.autoscaling_config.max_replicas == 32


# --- one rank's bundles and engine -------------------------------------------------------------------------------

def test_rank_bundles_group_by_node_with_the_meeting_node_first() -> None:
    # Ray reserved a gang of 4 ranks x 2 bundles on two nodes, interleaved.
    nodes = {0: "b", 1: "a", 2: "b", 3: "a", 4: "b", 5: "a", 6: "b", 7: "a"}
    ranks = [rank_bundles(rank, 2, nodes, first_node="b") for rank in range(4)]
    assert ranks == [(0, 2), (4, 6), (1, 3), (5, 7)]
    assert all(len({nodes[i] for i in bundles}) == 1 for bundles in ranks)  # a rank's TP group on one node


def test_rank_bundles_refuse_a_rank_past_the_group() -> None:
    with pytest.raises(ValueError, match="rank 2 needs bundles 4..5"):
        rank_bundles(2, 2, {0: "a", 1: "a", 2: "a", 3: "a"}, "a")


def test_a_rank_engine_gets_vllms_data_and_expert_parallel_arguments() -> None:
    rank = DataParallelRank(rank=3, size=16, address="10.0.0.7", rpc_port=29550, bundles=(3,))
    spec = engine_spec(wide_ep(), "/models/deepseek", data_parallel=rank)
    kwargs = engine_kwargs(spec)
    assert {key: kwargs[key] for key in ("data_parallel_size", "data_parallel_rank", "data_parallel_address",
                                         "data_parallel_rpc_port", "enable_expert_parallel",
                                         "distributed_executor_backend", "tensor_parallel_size")} == {
        "data_parallel_size": 16, "data_parallel_rank": 3, "data_parallel_address": "10.0.0.7",
        "data_parallel_rpc_port": 29550, "enable_expert_parallel": True,
        # one GPU per rank still goes through the Ray executor, whose worker takes the rank's own bundle
        "distributed_executor_backend": "ray", "tensor_parallel_size": 1}
    assert set(kwargs) <= vllm_engine_arg_names()
    assert rank_bundles_env(spec) == {BUNDLES_ENV: "3"}


def test_an_engine_outside_a_data_parallel_group_gets_none_of_it() -> None:
    spec = engine_spec(model({"tensor": 8, "expert": True}), "/models/m")
    kwargs = engine_kwargs(spec)
    assert kwargs["enable_expert_parallel"] is True
    assert not any(key.startswith("data_parallel") for key in kwargs) and rank_bundles_env(spec) == {}
    assert "enable_expert_parallel" not in engine_kwargs(engine_spec(model({"tensor": 8}), "/models/m"))
