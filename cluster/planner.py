"""Capacity planning: the smallest GPU layout (tensor x pipeline, or data-parallel ranks with expert parallelism for
MoE models) whose GPUs hold a model and its KV cache."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType

from cluster.model_shape import BYTES_PER_PARAM, UNQUANTIZED, ModelShape

GB = 10**9
MIB = 2**20
# Tokens of one prefill step that the activation reserve covers: vLLM's max_num_batched_tokens default for
# serving on large GPUs. Longer prompts are chunked to it, so it bounds the activation peak.
BATCHED_TOKENS = 8192
# Per-GPU memory outside weights, KV cache and activations that vLLM counts against its budget: CUDA graphs,
# NCCL buffers, the CUDA context and allocator slack. A measured-ish 2 GiB, not a derivation.
OVERHEAD_BYTES = 2 * 2**30
DEFAULT_MAX_NODES = 16


class PlanError(ValueError):
    """A planning request that makes no sense (unknown GPU, zero context); the message names the fix."""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int  # as the driver reports it, which is what vLLM's memory utilization is a fraction of
    marketed: str


# Memory sizes as nvidia-smi reports them (MiB); marketing rounds them to "80 GB", "141 GB"...
GPUS = MappingProxyType({gpu.name.lower(): gpu for gpu in (
    Gpu("H100", 81559 * MIB, "80 GB"), Gpu("H200", 143771 * MIB, "141 GB"),
    Gpu("A100-80G", 81920 * MIB, "80 GB"), Gpu("A100-40G", 40960 * MIB, "40 GB"),
    Gpu("L40S", 46068 * MIB, "48 GB"), Gpu("A10G", 23028 * MIB, "24 GB"), Gpu("L4", 23034 * MIB, "24 GB"))})


def find_gpu(name: str) -> Gpu:
    try:
        return GPUS[name.strip().lower()]
    except KeyError:
        known = ", ".join(gpu.name for gpu in GPUS.values())
        raise PlanError(f"unknown GPU {name!r}; the planner knows {known}") from None


@dataclass(frozen=True)
class Layout:
    """One replica's GPUs: `data` ranks (data-parallel attention) of tensor x pipeline each; with `expert`, a MoE
    model's experts are spread whole over all of them."""

    tensor: int
    pipeline: int
    nodes: int
    data: int = 1
    expert: bool = False

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline * self.data

    @property
    def split(self) -> str:
        """How the model is split, without the nodes: "TP8 x PP2", "TP1 x PP1 x DP16 with expert parallelism"."""
        ranks = f" x DP{self.data}" if self.data > 1 else ""
        return f"TP{self.tensor} x PP{self.pipeline}{ranks}{' with expert parallelism' if self.expert else ''}"

    def __str__(self) -> str:
        return f"{self.split} on {self.nodes} node{'s' if self.nodes > 1 else ''}"


@dataclass(frozen=True)
class GpuMemory:
    """Memory of the fullest GPU of a layout, in bytes; `budget` is what vLLM may use of `capacity`."""

    capacity: int
    budget: int
    weights: int
    kv_cache: int
    activations: int
    overhead: int

    @property
    def used(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def free(self) -> int:
        return self.budget - self.used


@dataclass(frozen=True)
class Plan:
    """The smallest layout that fits, or, when `fits` is false, the largest one tried and why it fails."""

    model: str
    gpu: str
    context: int
    concurrency: int
    gpus_per_node: int
    memory_utilization: float
    params: int
    weight_format: str
    weight_bytes: int
    kv_cache_dtype: str
    kv_bytes_per_token: int  # whole model, one copy: the figure the model's architecture dictates
    kv_bytes_total: int  # for context x concurrency tokens
    fits: bool
    layout: Layout
    per_gpu: GpuMemory
    reason: str
    notes: tuple[str, ...] = ()


def plan(shape: ModelShape, gpu: Gpu | str, context: int, concurrency: int, gpus_per_node: int = 8,
         memory_utilization: float = 0.9, max_nodes: int = DEFAULT_MAX_NODES, expert_parallel: bool = False) -> Plan:
    """The smallest layout of `gpu`s holding `shape` with KV cache for `concurrency` sequences of `context` tokens;
    with `expert_parallel`, among data-parallel layouts whose ranks share a MoE model's experts."""
    gpu = find_gpu(gpu) if isinstance(gpu, str) else gpu
    _check_request(context, concurrency, gpus_per_node, memory_utilization, max_nodes)
    if expert_parallel and not shape.is_moe:
        raise PlanError(f"expert parallelism needs a mixture-of-experts model; {shape.name} has no experts")
    tokens = context * concurrency
    layouts = (expert_layouts(gpus_per_node, max_nodes) if expert_parallel
               else candidate_layouts(shape, gpus_per_node, max_nodes))
    tried: tuple[Layout, GpuMemory] | None = None
    for layout in layouts:
        memory = gpu_memory(shape, layout, tokens, gpu, memory_utilization)
        if memory.free >= 0:
            return _plan(shape, gpu, context, concurrency, gpus_per_node, memory_utilization,
                         True, layout, memory, _why_this(tried))
        tried = (layout, memory)
    assert tried is not None  # TP1 x PP1, or DP2 with experts, is always a candidate
    return _plan(shape, gpu, context, concurrency, gpus_per_node, memory_utilization,
                 False, *tried, _why_not(shape, gpu, tried[1], memory_utilization, max_nodes))


def _check_request(context: int, concurrency: int, gpus_per_node: int, utilization: float, max_nodes: int) -> None:
    for name, value in (("context", context), ("concurrency", concurrency), ("gpus_per_node", gpus_per_node),
                        ("max_nodes", max_nodes)):
        if value < 1:
            raise PlanError(f"{name} must be at least 1, got {value}")
    if not 0 < utilization <= 1:
        raise PlanError(f"memory_utilization is a fraction in (0, 1], got {utilization}")


def tensor_sizes(shape: ModelShape, gpus_per_node: int) -> tuple[int, ...]:
    """Tensor-parallel sizes worth trying, smallest first.

    Powers of two that divide the attention heads, and the KV heads too when there are at least as many of
    them (fewer are replicated). They must also divide the node: a TP group all-reduces every layer and
    needs NVLink, which never spans nodes; pipeline stages are what cross them.
    """
    sizes = []
    size = 1
    while size <= gpus_per_node:
        kv_ok = shape.num_kv_heads < size or shape.num_kv_heads % size == 0
        if gpus_per_node % size == 0 and shape.num_attention_heads % size == 0 and kv_ok:
            sizes.append(size)
        size *= 2
    return tuple(sizes)


def candidate_layouts(shape: ModelShape, gpus_per_node: int, max_nodes: int) -> Iterator[Layout]:
    """Layouts in order of GPU count: wider TP within one node, then pipeline stages of the widest TP."""
    sizes = tensor_sizes(shape, gpus_per_node)
    for tensor in sizes:
        yield Layout(tensor, 1, 1)
    widest = sizes[-1]
    for pipeline in range(2, shape.num_layers + 1):
        nodes = math.ceil(widest * pipeline / gpus_per_node)
        if nodes > max_nodes:
            return
        yield Layout(widest, pipeline, nodes)


def expert_layouts(gpus_per_node: int, max_nodes: int) -> Iterator[Layout]:
    """Wide expert parallelism, smallest first: 2, 4, 8... ranks of one GPU each, the experts spread over all.

    Attention and the dense layers are whole on every rank, so ranks are added, never tensor-parallel slices."""
    ranks = 2
    while (nodes := math.ceil(ranks / gpus_per_node)) <= max_nodes:
        yield Layout(1, 1, nodes, data=ranks, expert=True)
        ranks *= 2


def stage_layers(num_layers: int, pipeline: int) -> tuple[range, ...]:
    """vLLM's split of layers over pipeline stages: even, with the remainder on the stages before the last."""
    sizes = [num_layers // pipeline] * pipeline
    for index in range(2, num_layers % pipeline + 2):  # the last stage already carries the output head
        sizes[-index] += 1
    starts = [sum(sizes[:i]) for i in range(pipeline)]
    return tuple(range(start, start + size) for start, size in zip(starts, sizes))


def gpu_memory(shape: ModelShape, layout: Layout, tokens: int, gpu: Gpu, utilization: float) -> GpuMemory:
    """Memory of the fullest GPU when `layout` serves `shape` with `tokens` tokens of KV cache."""
    stages = stage_layers(shape.num_layers, layout.pipeline)
    return max((_stage_memory(shape, layout, stage, tokens, gpu, utilization) for stage in range(len(stages))),
               key=lambda memory: memory.used)


def _stage_memory(shape: ModelShape, layout: Layout, stage: int, tokens: int, gpu: Gpu,
                  utilization: float) -> GpuMemory:
    layers = stage_layers(shape.num_layers, layout.pipeline)[stage]
    first, last = stage == 0, stage == layout.pipeline - 1
    experts = sum(map(shape.layer_expert_bytes, layers))
    weights = sum(map(shape.layer_bytes, layers)) - experts
    weights += shape.embedding_bytes if first else 0
    # The output head lives on the last stage: its own matrix, or a copy of tied embeddings on another stage.
    weights += shape.embedding_bytes if last and not (first and shape.tied_embeddings) else 0
    # TP shards each layer evenly; its replicated bits (norms, MLA's down-projections) are under 1%. Data-parallel
    # ranks each hold the rest whole, but share the routed experts, and each caches only its own sequences.
    return GpuMemory(
        capacity=gpu.memory_bytes, budget=int(gpu.memory_bytes * utilization),
        weights=math.ceil(weights / layout.tensor) + math.ceil(experts / (layout.tensor * layout.data)),
        kv_cache=math.ceil(tokens / layout.data) * shape.kv_bytes_per_token(len(layers), layout.tensor),
        activations=_activation_bytes(shape, layout.tensor), overhead=OVERHEAD_BYTES)


def _activation_bytes(shape: ModelShape, tensor: int) -> int:
    # A rough peak of one prefill step: a few hidden-size tensors plus the MLP's gate, up and product
    # (sharded by TP). Logits are computed for the last token of each sequence only, and are small.
    per_token = 4 * shape.hidden_size + 3 * math.ceil(shape.mlp_width / tensor)
    return BATCHED_TOKENS * per_token * int(BYTES_PER_PARAM[shape.dtype])


def _plan(shape: ModelShape, gpu: Gpu, context: int, concurrency: int, gpus_per_node: int, utilization: float,
          fits: bool, layout: Layout, memory: GpuMemory, reason: str) -> Plan:
    per_token = shape.kv_bytes_per_token()
    return Plan(
        model=shape.name, gpu=gpu.name, context=context, concurrency=concurrency, gpus_per_node=gpus_per_node,
        memory_utilization=utilization, params=shape.params, weight_format=shape.weight_format,
        weight_bytes=round(shape.weight_bytes), kv_cache_dtype=shape.kv_format, kv_bytes_per_token=per_token,
        kv_bytes_total=per_token * context * concurrency, fits=fits, layout=layout, per_gpu=memory,
        reason=reason, notes=_notes(shape, context, gpus_per_node))


def _why_this(smaller: tuple[Layout, GpuMemory] | None) -> str:
    if smaller is None:
        return "the smallest layout fits"
    layout, memory = smaller
    return (f"the next smaller layout, {layout}, would need {memory.used / GB:.1f} GB per GPU "
            f"of a {memory.budget / GB:.1f} GB budget")


def _why_not(shape: ModelShape, gpu: Gpu, memory: GpuMemory, utilization: float, max_nodes: int) -> str:
    head = (f"{shape.name} needs {memory.used / GB:.1f} GB on its fullest GPU even over {max_nodes} node(s), "
            f"but a {gpu.name} offers {memory.budget / GB:.1f} GB at memory utilization {utilization}")
    if memory.weights + memory.activations + memory.overhead > memory.budget:
        return f"{head}: the weights alone take {memory.weights / GB:.1f} GB; allow more nodes, take bigger " \
               f"GPUs{_smaller_format(shape.weight_format)}"
    return f"{head}: the KV cache takes {memory.kv_cache / GB:.1f} GB; lower context or concurrency, " \
           f"or store the cache in fp8"


def _smaller_format(weight_format: str) -> str:
    if weight_format in UNQUANTIZED:
        return " or quantize (dtype fp8 or int4)"
    return "" if weight_format == "int4" else " or quantize to 4 bits (dtype int4)"


def _notes(shape: ModelShape, context: int, gpus_per_node: int) -> tuple[str, ...]:
    notes = []
    if shape.max_position_embeddings and context > shape.max_position_embeddings:
        notes.append(f"context {context} exceeds the model's max_position_embeddings "
                     f"{shape.max_position_embeddings}")
    widest = tensor_sizes(shape, gpus_per_node)[-1]
    if widest < gpus_per_node:
        notes.append(f"tensor parallel stops at {widest}: {shape.num_attention_heads} attention heads and "
                     f"{shape.num_kv_heads} KV heads allow no wider power of two")
    return tuple(notes)
