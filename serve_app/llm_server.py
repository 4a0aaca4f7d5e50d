"""The engine deployment: one Serve replica serving one model through an injected engine class."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from serve_app.config import ModelConfig
from serve_app.model_source import resolve_source
from serve_app.placement import cpu_thread_binding, executor_backend
from serve_app.vllm_adapter import EngineReply, EngineSpec, VLLMEngine

logger = logging.getLogger(__name__)

ENDPOINTS = ("chat", "completions")


@dataclass(frozen=True)
class Accepted:
    """First item of every reply stream: a replica has taken the request (the model is not cold).

    It carries the engine's context length, which the router lists in /v1/models when the config sets none."""

    max_model_len: int | None = None


@dataclass(frozen=True)
class ReplyHead:
    """Second item: the HTTP status, and the whole JSON body unless chunks follow."""

    status: int
    streaming: bool
    body: dict[str, Any] | None = None


def engine_spec(model: ModelConfig, model_path: str) -> EngineSpec:
    return EngineSpec(
        model_path=model_path,
        served_names=model.served_names,
        engine_args=dict(model.engine),
        tensor_parallel=model.parallelism.tensor,
        pipeline_parallel=model.parallelism.pipeline,
        distributed_backend=executor_backend(model),
    )


class LLMServer:
    """Serve replica of one model. `engine_cls` is VLLMEngine in production and a fake in fast tests."""

    async def __init__(self, model: ModelConfig, engine_cls: type = VLLMEngine) -> None:
        from ray.util import get_current_placement_group

        self._model = model
        if model.resources.device == "cpu" and model.parallelism.world_size > 1:
            # vLLM's automatic binding gives each rank a NUMA node; ranks sharing one node need explicit cores.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(
                model.parallelism.world_size, model.resources.cpus_per_worker, sorted(os.sched_getaffinity(0)))
        model_path = await asyncio.to_thread(resolve_source, model.source)
        spec = engine_spec(model, model_path)
        logger.info("starting engine for %s from %s", model.name, model_path)
        self._engine = await engine_cls.start(spec, placement_group=get_current_placement_group())

    async def generate(self, endpoint: str, body: dict[str, Any], request_id: str) -> AsyncIterator[Any]:
        """Accepted, then a ReplyHead, then (when streaming) the SSE lines as the engine makes them."""
        yield Accepted(self._engine.max_model_len)
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        reply: EngineReply = await getattr(self._engine, endpoint)(body, request_id)
        yield ReplyHead(reply.status, streaming=reply.stream is not None, body=reply.body)
        if reply.stream is not None:
            async for chunk in reply.stream:
                yield chunk

    def stats(self) -> dict[str, Any]:
        return {"model": self._model.name, "unfinished_requests": self._engine.unfinished_requests(),
                "max_model_len": self._engine.max_model_len}

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
