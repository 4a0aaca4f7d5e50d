"""The Ray Data pipeline of a batch job: read and normalise input chunks, then answer them on an engine actor pool."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cluster.batch.engine_stage import EngineStage
from cluster.batch.output import encode, error_row, output_id
from cluster.batch.plan import CHUNK_LINES, BatchPlan, Chunk
from cluster.batch.requests import Request, parse_line
from serve_app.config import ModelConfig
from serve_app.placement import replica_placement
from serve_app.engine_protocol import Engine
from serve_app.vllm_adapter import VLLMEngine

if TYPE_CHECKING:
    from ray.data import Dataset

# Reading and normalising a chunk is light work; a fraction of a core leaves the cores to the engines.
READ_CPUS = 0.25
# Sizes Ray Data's queue of batches per engine when --max-in-flight is not given (the engine then picks its own
# number, which on the largest GPUs reaches 2 x 1024 sequences).
ASSUMED_IN_FLIGHT = 2048


def build_dataset(plan: BatchPlan, model: ModelConfig, input_path: Path, max_in_flight: int | None = None,
                  engine_cls: type[Engine] = VLLMEngine) -> Dataset:
    """The dataset of output rows (columns: output, prompt_tokens, completion_tokens, failed) of `plan`."""
    import ray
    from ray.data import ActorPoolStrategy
    from ray.util.placement_group import NODE_ID_LABEL_KEY

    chunks = ray.data.from_items([{"chunk": chunk.to_json()} for chunk in plan.chunks],
                                 override_num_blocks=len(plan.chunks))
    # The input file is where the job was started: read it on that node.
    here = {NODE_ID_LABEL_KEY: ray.get_runtime_context().get_node_id()}
    requests = chunks.map_batches(read_requests, fn_kwargs={"path": str(input_path), "model": model.name},
                                  batch_size=None, num_cpus=READ_CPUS, label_selector=here)
    # Each engine keeps twice its in-flight budget queued in Ray Data's calls, so it never waits for rows.
    calls = math.ceil(2 * (max_in_flight or ASSUMED_IN_FLIGHT) / CHUNK_LINES)
    smallest, largest = replica_range(model)
    options, placement_fn = engine_placement(model)
    return requests.map_batches(
        EngineStage, batch_size=CHUNK_LINES,
        fn_constructor_kwargs={"model": model, "max_in_flight": max_in_flight, "engine_cls": engine_cls},
        compute=ActorPoolStrategy(min_size=smallest, max_size=largest, max_tasks_in_flight_per_actor=calls,
                                  max_concurrent_calls_per_actor=calls),
        ray_remote_args_fn=placement_fn, **options)


def replica_range(model: ModelConfig) -> tuple[int, int]:
    """Engine actors of the job: one per model replica, within the model's autoscaling bounds (at least one)."""
    smallest = max(1, model.autoscaling.min_replicas)
    return smallest, max(smallest, model.autoscaling.max_replicas)


def engine_placement(model: ModelConfig) -> tuple[dict[str, Any], Callable[[], dict[str, Any]] | None]:
    """Ray options of an engine actor, placed as a Serve replica of the model is, and a function giving each
    actor a placement group of its own where a replica has one (GPU: one bundle per tensor/pipeline worker)."""
    placement = replica_placement(model)
    options = dict(placement.ray_actor_options)
    if placement.env_vars:
        options["runtime_env"] = {"env_vars": dict(placement.env_vars)}
    if placement.placement_group_bundles is None:
        return options, None
    return options, functools.partial(_own_placement_group, placement.placement_group_bundles,
                                      placement.placement_group_strategy)


def _own_placement_group(bundles: list[dict[str, float]], strategy: str) -> dict[str, Any]:
    # vLLM's Ray executor finds the actor's placement group and starts a worker in each bundle, as in Serve.
    from ray.util import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group(bundles, strategy=strategy)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}


REQUEST_COLUMNS = ("id", "custom_id", "endpoint", "body", "output")


def read_requests(batch: dict[str, np.ndarray], path: str, model: str) -> dict[str, list[Any]]:
    """Ray Data stage: the request rows of a batch of chunks; a line that is no request carries its error row."""
    rows = []
    for spec in batch["chunk"].tolist():
        chunk = Chunk.from_json(spec)
        for line, raw in chunk.lines(Path(path)):
            rows.append(request_row(parse_line(raw, line, model), *chunk.repeat_of(line)))
    return {column: [row[column] for row in rows] for column in REQUEST_COLUMNS}


def request_row(request: Request, occurrence: int, first_line: int) -> dict[str, Any]:
    row_id = output_id(request.custom_id, occurrence)
    row = {"id": row_id, "custom_id": request.custom_id, "endpoint": "", "body": "", "output": ""}
    if occurrence:
        row["output"] = encode(error_row(row_id, request.custom_id, "duplicate_custom_id",
                                         f"line {request.line} repeats the custom_id {request.custom_id!r} of "
                                         f"line {first_line}; custom_ids must be unique"))
    elif request.error:
        row["output"] = encode(error_row(row_id, request.custom_id, request.error.code, request.error.message))
    else:
        row.update(endpoint=request.endpoint, body=json.dumps(request.body))
    return row
