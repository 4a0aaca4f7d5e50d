"""Whether each model of a cluster config fits the resources it declares, read from the model's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.model_shape import ModelShapeError, read_shape
from cluster.node_pools import PoolError, resolve_pools
from cluster.planner import fit_warnings
from serve_app.config import ClusterConfig

# The node shape assumed when the config's node pools cannot be resolved (render reports why).
DEFAULT_GPUS_PER_NODE = 8


@dataclass(frozen=True)
class FitCheck:
    """`warnings`: models that cannot serve as declared; `unchecked`: models whose config.json is not here."""

    warnings: tuple[str, ...]
    unchecked: tuple[str, ...]

    def lines(self) -> list[str]:
        return [f"warning: {w}" for w in self.warnings] + [f"note: {n}" for n in self.unchecked]


def check_config(config: ClusterConfig) -> FitCheck:
    """Check every model against its parallelism, accelerator and node pool; never downloads anything."""
    gpus_per_node = _gpus_per_node(config)
    warnings: list[str] = []
    unchecked: list[str] = []
    for model in config.models:
        try:
            shape = read_shape(model.source)
        except ModelShapeError as exc:
            unchecked.append(f"model {model.name}: not checked: {exc}")
            continue
        node_gpus = gpus_per_node.get(model.name, DEFAULT_GPUS_PER_NODE)
        warnings.extend(f"model {model.name}: {warning}" for warning in fit_warnings(model, shape, node_gpus))
    return FitCheck(tuple(warnings), tuple(unchecked))


def _gpus_per_node(config: ClusterConfig) -> dict[str, int]:
    """Model name -> GPUs of one node of the pool hosting it (GPU models only)."""
    try:
        pools = resolve_pools(config)
    except PoolError:
        return {}
    return {name: pool.gpus_per_node for name, pool in pools.items() if pool.gpus_per_node}
