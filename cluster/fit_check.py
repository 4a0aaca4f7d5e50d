"""Whether each model of a cluster config fits the resources it declares, read from the model's config.json."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from cluster.model_shape import ModelShape, ModelShapeError, read_shape, with_precision
from cluster.node_pools import PoolError, resolve_pools
from cluster.planner import GB, Gpu, Layout, PlanError, find_gpu, gpu_memory, plan
from serve_app.config import ClusterConfig, ModelConfig

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


def fit_warnings(model: ModelConfig, shape: ModelShape, gpus_per_node: int = 8) -> tuple[str, ...]:
    """Why `model`'s declared parallelism and accelerator cannot serve `shape`; empty when nothing is wrong.

    Memory is checked for one sequence of max_model_len tokens, what vLLM demands before it starts; GPU
    memory only when the config names an accelerator the planner knows.
    """
    tensor, pipeline = model.parallelism.tensor, model.parallelism.pipeline
    warnings = [*_split_warnings(shape, tensor, pipeline), *_expert_warnings(model, shape)]
    if model.resources.device != "gpu" or not model.resources.accelerator:
        return tuple(warnings)
    if tensor > gpus_per_node:
        warnings.append(f"parallelism.tensor {tensor} spans nodes of {gpus_per_node} GPUs; tensor-parallel "
                        f"traffic across nodes is slow: keep tensor within a node and raise pipeline instead")
    try:
        gpu = find_gpu(model.resources.accelerator)
        shape = _engine_precision(shape, model.engine)
    except (PlanError, ModelShapeError) as exc:
        return (*warnings, f"memory not checked: {exc}")
    return (*warnings, *_memory_warnings(model, shape, gpu, gpus_per_node))


def _vllm_can_split(shape: ModelShape, tensor: int) -> bool:
    # vLLM's own rule, looser than the planner's preference for powers of two: KV heads divide evenly, or
    # there are fewer of them than ranks and each is replicated on the same number of ranks.
    kv_heads = shape.num_kv_heads
    kv_ok = kv_heads % tensor == 0 if kv_heads >= tensor else tensor % kv_heads == 0
    return shape.num_attention_heads % tensor == 0 and kv_ok


def _split_warnings(shape: ModelShape, tensor: int, pipeline: int) -> Iterator[str]:
    if not _vllm_can_split(shape, tensor):
        valid = [size for size in range(1, 65) if _vllm_can_split(shape, size)]
        yield (f"parallelism.tensor {tensor} does not split {shape.name}'s {shape.num_attention_heads} attention "
               f"heads and {shape.num_kv_heads} KV heads evenly; use one of {', '.join(map(str, valid))}")
    if pipeline > shape.num_layers:
        yield f"parallelism.pipeline {pipeline} exceeds the {shape.num_layers} layers of {shape.name}"


def _expert_warnings(model: ModelConfig, shape: ModelShape) -> Iterator[str]:
    if model.parallelism.expert and not shape.is_moe:
        refused = " and vLLM refuses parallelism.data > 1 for it" if model.parallelism.data > 1 else ""
        yield (f"parallelism.expert is set, but {shape.name} is a dense model with no experts to spread{refused}; "
               f"remove parallelism.expert and parallelism.data")


def _engine_precision(shape: ModelShape, engine: dict[str, object]) -> ModelShape:
    shape = with_precision(shape, dtype=str(engine.get("dtype") or "auto"),
                           kv_cache_dtype=str(engine.get("kv_cache_dtype") or "auto"))
    return with_precision(shape, dtype=str(engine.get("quantization") or "auto"))


def _memory_warnings(model: ModelConfig, shape: ModelShape, gpu: Gpu, gpus_per_node: int) -> Iterator[str]:
    parallelism = model.parallelism
    tensor, pipeline = parallelism.tensor, parallelism.pipeline
    utilization = float(model.engine.get("gpu_memory_utilization") or 0.9)
    max_len = int(model.engine.get("max_model_len") or shape.max_position_embeddings or 0)
    layout = Layout(tensor, pipeline, math.ceil(parallelism.workers / gpus_per_node), parallelism.data,
                    parallelism.expert)
    # Every data-parallel rank must hold one whole sequence.
    memory = gpu_memory(shape, layout, max_len * parallelism.data, gpu, utilization)
    if memory.free >= 0:
        return
    where = f"at {layout.split} on {gpu.name} (gpu_memory_utilization {utilization})"
    if memory.kv_cache <= -memory.free:
        suggestion = plan(shape, gpu, max(1, max_len), 1, gpus_per_node, utilization,
                          expert_parallel=parallelism.expert and parallelism.data > 1)
        hint = f"; the planner suggests {suggestion.layout}" if suggestion.fits else ""
        yield (f"weights need {memory.weights / GB:.1f} GB per GPU {where}, more than the "
               f"{(memory.budget - memory.activations - memory.overhead) / GB:.1f} GB left after "
               f"activations{hint}")
        return
    room = (memory.kv_cache + memory.free) // (memory.kv_cache // max_len)  # tokens of the fullest GPU
    yield (f"the KV cache of one {max_len}-token sequence takes {memory.kv_cache / GB:.1f} GB "
           f"per GPU {where} and does not fit; lower engine.max_model_len to at most {room} or add GPUs")
