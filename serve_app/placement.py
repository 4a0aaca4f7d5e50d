"""Where a model replica runs: Ray resources, placement-group bundles and CPU cores per rank, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.config import ModelConfig

# Ray's convention for accelerator resources; a node reports `accelerator_type:H100: 1`.
ACCELERATOR_RESOURCE = "accelerator_type:{}"
NODE_POOL_RESOURCE = "node_pool:{}"
# A marker amount: asks for "a node carrying this label" without consuming its capacity.
LABEL_AMOUNT = 0.001
# The replica actor itself only awaits the engine; the engine's work is accounted to the workers.
REPLICA_ACTOR_CPUS = 1.0


@dataclass(frozen=True)
class ReplicaPlacement:
    """Serve deployment options that place one replica of a model.

    A replica of `parallelism.data` ranks is a gang of that many Serve replicas, one engine each, which Serve
    places (in one placement group of all their bundles), starts and restarts together."""

    ray_actor_options: dict[str, Any]
    placement_group_bundles: list[dict[str, float]] | None = None  # of one Serve replica
    placement_group_strategy: str | None = None
    gang_size: int = 1
    env_vars: dict[str, str] = field(default_factory=dict)

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ray_actor_options": self.ray_actor_options}
        if self.placement_group_bundles is None:
            return options
        options["placement_group_bundles"] = self.placement_group_bundles
        if self.gang_size > 1:  # Serve refuses a per-replica strategy beside a gang's
            options["gang_scheduling_config"] = {"gang_size": self.gang_size,
                                                 "gang_placement_strategy": self.placement_group_strategy}
        else:
            options["placement_group_strategy"] = self.placement_group_strategy
        return options


def label_resources(model: ModelConfig) -> dict[str, float]:
    labels = {}
    if model.resources.accelerator:
        labels[ACCELERATOR_RESOURCE.format(model.resources.accelerator)] = LABEL_AMOUNT
    if model.resources.node_pool:
        labels[NODE_POOL_RESOURCE.format(model.resources.node_pool)] = LABEL_AMOUNT
    return labels


def replica_placement(model: ModelConfig) -> ReplicaPlacement:
    if model.resources.device == "gpu":
        return _gpu_placement(model)
    return _cpu_placement(model)


def _cpu_placement(model: ModelConfig) -> ReplicaPlacement:
    # vLLM's multiprocessing executor runs every rank as a child process of the replica, so the replica
    # reserves the cores of all its ranks; each rank is bound to one of them when the engine starts.
    cpus = model.parallelism.world_size * model.resources.cpus_per_worker
    return ReplicaPlacement(ray_actor_options={"num_cpus": cpus, "resources": label_resources(model)})


def _gpu_placement(model: ModelConfig) -> ReplicaPlacement:
    # One bundle per worker; the replica actor shares the first. vLLM's Ray executor finds the placement
    # group of the replica and starts one worker in each GPU bundle, so the group decides the nodes. A gang's
    # group holds the bundles of all its ranks; each rank's engine is told which are its own (data_parallel.py).
    worker_bundle = {"GPU": 1.0, "CPU": model.resources.cpus_per_worker, **label_resources(model)}
    bundles = [dict(worker_bundle) for _ in range(model.parallelism.world_size)]
    bundles[0]["CPU"] += REPLICA_ACTOR_CPUS
    return ReplicaPlacement(
        ray_actor_options={"num_cpus": REPLICA_ACTOR_CPUS, "num_gpus": 0},
        placement_group_bundles=bundles,
        placement_group_strategy=model.resources.placement_strategy,
        gang_size=model.parallelism.data,
    )


def replica_gpus(model: ModelConfig) -> int:
    """GPUs one replica of `model` holds, all its data-parallel ranks together."""
    return model.parallelism.workers if model.resources.device == "gpu" else 0


def replica_cpus(model: ModelConfig) -> float:
    """Ray CPUs one replica of `model` reserves: its workers', and on GPU each rank's replica actor."""
    workers = model.parallelism.workers * model.resources.cpus_per_worker
    return workers + REPLICA_ACTOR_CPUS * model.parallelism.data if model.resources.device == "gpu" else workers


def rank_cores(world_size: int, cpus_per_worker: float, allowed_cores: list[int]) -> tuple[tuple[int, ...], ...]:
    """The cores of each rank of a CPU replica: one disjoint run per rank.

    The cores come from the replica process's own affinity and the CPU share Ray granted, never from fixed
    ids, so the same config binds correctly on any machine."""
    per_rank = max(1, int(cpus_per_worker))
    needed = world_size * per_rank
    if len(allowed_cores) < needed:
        raise ValueError(f"{world_size} CPU ranks x {per_rank} core(s) need {needed} cores; "
                         f"this process may use {len(allowed_cores)}: lower parallelism or cpus_per_worker")
    return tuple(tuple(allowed_cores[rank * per_rank:(rank + 1) * per_rank]) for rank in range(world_size))
