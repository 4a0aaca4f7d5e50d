"""Which node pool hosts each model and how many nodes each pool needs, decided as plain values."""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve_app.config import ClusterConfig, ModelConfig
from serve_app.kubernetes_config import NodePoolConfig
from serve_app.placement import REPLICA_ACTOR_CPUS, replica_cpus, replica_gpus

# The shape of a pool derived for models when the config declares none: a common 8-GPU machine, requests
# kept well under what such machines can allocate; a CPU pool just big enough for its largest replica.
DERIVED_GPU_POOL = {"gpus_per_node": 8, "cpus": 64, "memory": "512Gi"}
DERIVED_CPU_POOL_MEMORY = "8Gi"
DERIVED_CPU_POOL_MIN_CPUS = 2


class PoolError(ValueError):
    """A model that no node pool can host; the message names the model, the pool and the fix."""


@dataclass(frozen=True)
class PoolPlan:
    """One worker group: the pool, the models it hosts and its worker pod counts."""

    pool: NodePoolConfig
    models: tuple[str, ...]
    min_nodes: int
    max_nodes: int
    initial_nodes: int


def resolve_pools(config: ClusterConfig) -> dict[str, NodePoolConfig]:
    """Model name -> the pool hosting it: the declared pools, or pools derived from the models if none is."""
    declared = config.kubernetes.node_pools
    if declared:
        return {model.name: _declared_pool(model, declared) for model in config.models}
    derived: dict[str, NodePoolConfig] = {}
    for model in config.models:
        name = _derived_pool_name(model)
        derived[name] = _derived_pool(name, model, derived.get(name))
    return {model.name: derived[_derived_pool_name(model)] for model in config.models}


def _declared_pool(model: ModelConfig, pools: tuple[NodePoolConfig, ...]) -> NodePoolConfig:
    where = f"model {model.name}"
    if model.resources.node_pool:
        pool = next((p for p in pools if p.name == model.resources.node_pool), None)
        if pool is None:
            raise PoolError(f"{where}: resources.node_pool {model.resources.node_pool!r} is not among "
                            f"kubernetes.node_pools ({', '.join(p.name for p in pools)})")
        _check_device(model, pool)
        return pool
    fitting = [p for p in pools if _fits_device(model, p)]
    if len(fitting) != 1:
        found = ", ".join(p.name for p in fitting) or "none"
        raise PoolError(f"{where}: {len(fitting)} node pools fit its device/accelerator ({found}); "
                        "set resources.node_pool to one of kubernetes.node_pools")
    return fitting[0]


def _fits_device(model: ModelConfig, pool: NodePoolConfig) -> bool:
    if model.resources.device == "cpu":
        return pool.gpus_per_node == 0
    wanted = model.resources.accelerator
    return pool.gpus_per_node > 0 and (wanted is None or pool.accelerator == wanted)


def _check_device(model: ModelConfig, pool: NodePoolConfig) -> None:
    if not _fits_device(model, pool):
        kind = f"{pool.gpus_per_node} x {pool.accelerator or 'GPU'}" if pool.gpus_per_node else "CPU only"
        raise PoolError(f"model {model.name}: device {model.resources.device} "
                        f"{model.resources.accelerator or ''} does not match node pool {pool.name} ({kind})")


def _derived_pool_name(model: ModelConfig) -> str:
    if model.resources.node_pool:
        return model.resources.node_pool
    if model.resources.device == "cpu":
        return "cpu"
    accelerator = model.resources.accelerator
    return "gpu-" + "".join(c if c.isalnum() else "-" for c in accelerator.lower()) if accelerator else "gpu"


def _derived_pool(name: str, model: ModelConfig, so_far: NodePoolConfig | None) -> NodePoolConfig:
    """The pool `name` grown to host `model` too; `so_far` is what the models before it needed."""
    if so_far is not None:
        _check_device(model, so_far)
    if model.resources.device == "gpu":
        return so_far or NodePoolConfig(name=name, accelerator=model.resources.accelerator, **DERIVED_GPU_POOL)
    cpus = max(DERIVED_CPU_POOL_MIN_CPUS, math.ceil(replica_cpus(model)), so_far.cpus if so_far else 0)
    return NodePoolConfig(name=name, gpus_per_node=0, cpus=cpus, memory=DERIVED_CPU_POOL_MEMORY)


def nodes_per_replica(model: ModelConfig, pool: NodePoolConfig) -> int:
    """Nodes one replica spans: several only when its GPUs outnumber a node's."""
    if model.resources.device == "cpu":
        return 1
    return math.ceil(replica_gpus(model) / pool.gpus_per_node)


def replicas_per_node(model: ModelConfig, pool: NodePoolConfig) -> int:
    """Replicas one node holds (0 for a replica spanning nodes), bounded by both GPUs and CPUs."""
    gpus = replica_gpus(model)
    if gpus > pool.gpus_per_node:
        return 0
    by_cpu = math.floor(pool.cpus / replica_cpus(model))
    by_gpu = pool.gpus_per_node // gpus if gpus else by_cpu
    return min(by_cpu, by_gpu)


def check_fits(model: ModelConfig, pool: NodePoolConfig) -> None:
    """Raise when one replica of `model` can never be placed on nodes of `pool`."""
    where = f"model {model.name} on node pool {pool.name}"
    gpus = replica_gpus(model)
    if gpus > pool.gpus_per_node:
        if model.resources.placement_strategy == "STRICT_PACK":
            raise PoolError(f"{where}: STRICT_PACK keeps a replica on one node, but it needs {gpus} GPUs and a "
                            f"node has {pool.gpus_per_node}; use PACK or a pool with bigger nodes")
        # A full node of workers, with the replica actor of each data-parallel rank that starts on it.
        ranks_on_node = max(1, pool.gpus_per_node // model.parallelism.world_size)
        actors = min(ranks_on_node, model.parallelism.data)
        node_cpus = pool.gpus_per_node * model.resources.cpus_per_worker + REPLICA_ACTOR_CPUS * actors
        if node_cpus > pool.cpus:
            raise PoolError(f"{where}: a full node of workers needs {node_cpus:g} CPUs, the pool has {pool.cpus}")
        return
    if replicas_per_node(model, pool) == 0:
        raise PoolError(f"{where}: one replica needs {replica_cpus(model):g} CPUs, a node has {pool.cpus}; "
                        "raise the pool's cpus or lower resources.cpus_per_worker")


def packed_nodes(demands: list[tuple[ModelConfig, int]], pool: NodePoolConfig) -> int:
    """Fewest nodes holding `replicas` of each model when replicas that fit a node share nodes."""
    spanning = sum(count * nodes_per_replica(m, pool) for m, count in demands if replicas_per_node(m, pool) == 0)
    shared = [(m, count) for m, count in demands if replicas_per_node(m, pool) > 0]
    cpus = sum(count * replica_cpus(m) for m, count in shared)
    gpus = sum(count * replica_gpus(m) for m, count in shared)
    by_gpu = math.ceil(gpus / pool.gpus_per_node) if pool.gpus_per_node else 0
    return spanning + max(math.ceil(cpus / pool.cpus), by_gpu)


def separate_nodes(demands: list[tuple[ModelConfig, int]], pool: NodePoolConfig) -> int:
    """Nodes for `replicas` of each model when no two models share a node: an upper bound on what packing needs."""
    total = 0
    for model, count in demands:
        per_node = replicas_per_node(model, pool)
        total += math.ceil(count / per_node) if per_node else count * nodes_per_replica(model, pool)
    return total


def plan_pools(config: ClusterConfig, model_names: tuple[str, ...] | None = None) -> tuple[PoolPlan, ...]:
    """The worker groups hosting `model_names` (default all), in the order their pools first appear.

    min: the models' min_replicas packed tightly (the autoscaler adds nodes when packing falls short);
    max: every model's max_replicas on nodes of its own, so fragmentation never blocks a scale-up.
    """
    pools = resolve_pools(config)
    chosen = [m for m in config.models if model_names is None or m.name in model_names]
    plans = []
    for pool_name in dict.fromkeys(pools[m.name].name for m in chosen):
        pool = next(pools[m.name] for m in chosen if pools[m.name].name == pool_name)
        hosted = [m for m in chosen if pools[m.name].name == pool_name]
        for model in hosted:
            check_fits(model, pool)
        plans.append(_pool_plan(pool, hosted))
    return tuple(plans)


def _pool_plan(pool: NodePoolConfig, models: list[ModelConfig]) -> PoolPlan:
    min_nodes = packed_nodes([(m, m.autoscaling.min_replicas) for m in models], pool)
    max_nodes = separate_nodes([(m, m.autoscaling.max_replicas) for m in models], pool)
    initial = packed_nodes([(m, _initial(m)) for m in models], pool)
    min_nodes = pool.min_nodes if pool.min_nodes is not None else min_nodes
    max_nodes = pool.max_nodes if pool.max_nodes is not None else max_nodes
    if min_nodes > max_nodes:
        raise PoolError(f"node pool {pool.name}: min_nodes {min_nodes} exceeds max_nodes {max_nodes}")
    return PoolPlan(pool=pool, models=tuple(m.name for m in models), min_nodes=min_nodes, max_nodes=max_nodes,
                    initial_nodes=min(max(initial, min_nodes), max_nodes))


def _initial(model: ModelConfig) -> int:
    scaling = model.autoscaling
    return scaling.min_replicas if scaling.initial_replicas is None else scaling.initial_replicas


def head_ray_cpus(config: ClusterConfig) -> int:
    """Ray CPUs the head advertises: room for the router replicas only, so models go to the worker pools."""
    return math.ceil(config.router.replicas * config.router.cpus)


def uses_gpu(config: ClusterConfig) -> bool:
    return any(model.resources.device == "gpu" for model in config.models)
