"""An engine for placement tests: it reports where its replica's placement group put it, and holds requests
open on demand, so a simulated GPU cluster (tests/gpu_cluster.py) can be checked without a model or CUDA."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from serve_app.engine_protocol import EngineReply, EngineSpec
from tests.engine_fakes import FakeServingEngine

# A completion whose prompt is HOLD_PREFIX + seconds lasts that long, as a long generation does: load for autoscaling.
HOLD_PREFIX = "hold:"


class PlacementProbeEngine(FakeServingEngine):
    """Finds where its replica's placement group put it, as vLLM's Ray executor finds its workers: one task per
    bundle, asking for the bundle's GPU, reports its node and the GPU ids Ray gave it. Ray hands out the GPUs
    a node declares whether or not they exist, so no CUDA is needed. A chat answer's content is that report as
    JSON; a completion with a HOLD_PREFIX prompt is held open."""

    report: dict[str, Any]

    @classmethod
    async def start(cls, spec: EngineSpec, placement_group: Any = None) -> PlacementProbeEngine:
        engine = cls(spec)
        engine.report = await probe_placement(spec, placement_group)
        return engine

    async def chat(self, body: dict[str, Any], request_id: str) -> EngineReply:
        reply = await super().chat(body, request_id)
        reply.body["choices"][0]["message"]["content"] = json.dumps(self.report)
        return reply

    async def completions(self, body: dict[str, Any], request_id: str) -> EngineReply:
        prompt = str(body.get("prompt", ""))
        if prompt.startswith(HOLD_PREFIX):
            await asyncio.sleep(float(prompt.removeprefix(HOLD_PREFIX)))
        return await super().completions(body, request_id)


async def probe_placement(spec: EngineSpec, placement_group: Any) -> dict[str, Any]:
    """The engine's spec, the replica's node, and for each bundle of `placement_group` (of the engine's own, for a
    data-parallel rank) the node Ray reserved it on and the node and GPU ids a worker scheduled into it sees."""
    import ray
    from ray.util import placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rank = spec.data_parallel
    report: dict[str, Any] = {
        "model_path": spec.model_path, "tensor": spec.tensor_parallel, "pipeline": spec.pipeline_parallel,
        "executor": spec.distributed_backend, "replica_node": ray.get_runtime_context().get_node_id(),
        "expert_parallel": spec.expert_parallel, "data_parallel": rank and dataclasses.asdict(rank),
        "strategy": None, "bundles": []}
    if placement_group is None:
        return report
    table = placement_group_table(placement_group)
    report["strategy"] = table["strategy"]
    # A data-parallel rank's engine uses its own bundles of the gang's group, as vLLM's Ray executor is told to.
    own = set(rank.bundles) if rank else set(table["bundles"])

    # max_calls=0: Ray would otherwise start a fresh process for every GPU task; one per node is enough here.
    @ray.remote(num_cpus=0, max_calls=0)
    def worker() -> tuple[str, list[Any]]:
        return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()

    for index, bundle in sorted(item for item in table["bundles"].items() if item[0] in own):
        # One at a time, so each node reuses one probe process instead of starting one per bundle.
        node, gpu_ids = await worker.options(num_gpus=bundle.get("GPU", 0), scheduling_strategy=(
            PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=index))).remote()
        report["bundles"].append({"index": index, "reserved_on": table["bundles_to_node_id"][index],
                                  "worker_node": node, "gpu_ids": [str(gpu) for gpu in gpu_ids]})
    return report
