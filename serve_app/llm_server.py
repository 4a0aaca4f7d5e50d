"""The engine deployment: one Serve replica serving one model through an injected engine class."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from serve_app.config import ModelConfig
from serve_app.continuation import RESPONSES_FINAL_EVENTS
from serve_app.data_parallel import DataParallelRank, join_group, leave_group
from serve_app.engine_protocol import Endpoint, Engine, EngineReply, EngineSpec, answer
from serve_app.log_setup import configure_logging
from serve_app.model_source import resolve_source
from serve_app.observability_config import LoggingSettings
from serve_app.placement import rank_cores
from serve_app.vllm_adapter import VLLMEngine, executor_backend

logger = logging.getLogger(__name__)

# vLLM writes compact JSON: these two marks find its final usage chunk without parsing every chunk.
_USAGE_MARK = '"usage":{'
_NO_CHOICES_MARK = '"choices":[]'
_DONE_LINE = "data: [DONE]"
# Endpoints whose streams send their usage only when `stream_options.include_usage` asks for it.
_USAGE_OPTION_ENDPOINTS = (Endpoint.CHAT, Endpoint.COMPLETIONS)
# The ranks of a gang start together; rank 0 publishes its address within seconds of starting.
DATA_PARALLEL_MEETING_TIMEOUT_S = 300.0


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


@dataclass(frozen=True)
class ReplyEnd:
    """The token usage of a streamed reply, for quotas and metrics, sent just before [DONE]. The router keeps it
    from the client."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def engine_spec(model: ModelConfig, model_path: str, allowed_cores: list[int] | None = None,
                data_parallel: DataParallelRank | None = None) -> EngineSpec:
    """The engine of `model` in this process; a CPU replica of several ranks gets disjoint runs of
    `allowed_cores` (default: the cores this process may use); a data-parallel one is rank `data_parallel`."""
    world_size = model.parallelism.world_size
    cores: tuple[tuple[int, ...], ...] = ()
    if model.resources.device == "cpu" and world_size > 1:
        allowed = sorted(os.sched_getaffinity(0)) if allowed_cores is None else allowed_cores
        cores = rank_cores(world_size, model.resources.cpus_per_worker, allowed)
    return EngineSpec(
        model_path=model_path,
        served_names=model.served_names,
        engine_args=dict(model.engine),
        tensor_parallel=model.parallelism.tensor,
        pipeline_parallel=model.parallelism.pipeline,
        # A data-parallel rank of one GPU still needs the Ray executor: its worker takes its own bundle's GPU.
        distributed_backend=executor_backend(model.resources.device, model.parallelism.workers),
        rank_cores=cores,
        expert_parallel=model.parallelism.expert,
        data_parallel=data_parallel,
        stall_timeout_s=model.health.stall_timeout_s,
        task=model.task,
        frontend_args=dict(model.frontend),
    )


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def usage_of(chunk: str) -> ReplyEnd:
    try:
        usage = json.loads(chunk.removeprefix("data: "))["usage"]
        return ReplyEnd(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ReplyEnd()


def response_usage_of(event: str) -> ReplyEnd:
    """The usage of a Responses API stream's final event (`event: response.completed` and its data line)."""
    try:
        usage = json.loads(event.split("data: ", 1)[1])["response"]["usage"]
        return ReplyEnd(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return ReplyEnd()


async def stream_items(chunks: AsyncIterator[str], client_wants_usage: bool) -> AsyncIterator[str | ReplyEnd]:
    """The engine's SSE chunks, with the token count as a ReplyEnd just before [DONE] (or last, without one).

    The count goes before [DONE] because a client hangs up on [DONE], and the router may stop reading then.
    The usage chunk reaches the client only if it asked for it. A Responses API stream has no [DONE]: its
    count goes just before its final event, which holds it."""
    end: ReplyEnd | None = ReplyEnd()
    async for chunk in chunks:
        if chunk.startswith(RESPONSES_FINAL_EVENTS) and end is not None:
            yield response_usage_of(chunk)
            end = None
        elif _USAGE_MARK in chunk and _NO_CHOICES_MARK in chunk:  # the usage chunk vLLM sends before [DONE]
            end = usage_of(chunk)
            if not client_wants_usage:
                continue
        elif chunk.startswith(_DONE_LINE) and end is not None:
            yield end
            end = None
        yield chunk
    if end is not None:
        yield end


class LLMServer:
    """Serve replica of one model. `engine_cls` is VLLMEngine in production and the fake of tests/engine_fakes.py
    in fast tests."""

    async def __init__(self, model: ModelConfig, engine_cls: type[Engine] = VLLMEngine, metrics_hub: Any = None,
                       log_settings: LoggingSettings | None = None) -> None:
        from ray.util import get_current_placement_group

        from serve_app.metrics.hub_deployment import start_engine_metrics

        log_settings = log_settings or LoggingSettings()
        configure_logging(log_settings.format, log_settings.level, "serve_app")
        self._model = model
        self._data_rank = None
        if model.parallelism.data > 1:  # first: the other ranks of the gang wait for rank 0's address
            self._data_rank = await join_group(model.parallelism.world_size, DATA_PARALLEL_MEETING_TIMEOUT_S)
        model_path = await asyncio.to_thread(resolve_source, model.source)
        spec = engine_spec(model, model_path, data_parallel=self._data_rank)
        logger.info("starting engine for %s from %s", model.name, model_path)
        # Started on this thread, the replica's event loop, which lives as long as the replica: the engine's
        # processes watch it with a parent-death signal (vllm_adapter.fate_share_engine_process).
        self._engine: Engine = await engine_cls.start(spec, placement_group=get_current_placement_group())
        # vLLM's `vllm:` metrics, labelled with this model and replica, go to the hub that serves /metrics.
        self._metrics = (start_engine_metrics(metrics_hub, model.name, self._engine.metrics_registry())
                         if metrics_hub is not None else None)

    async def generate(self, endpoint: str | Endpoint, body: dict[str, Any], request_id: str) -> AsyncIterator[Any]:
        """Accepted, then a ReplyHead, then (when streaming) the SSE lines as the engine makes them and a ReplyEnd."""
        yield Accepted(self._engine.max_model_len)
        endpoint = Endpoint(endpoint)  # a ValueError for an endpoint engines do not answer
        client_wants_usage = wants_usage(body)
        options = body.get("stream_options")
        if (endpoint in _USAGE_OPTION_ENDPOINTS and body.get("stream") is True and not client_wants_usage
                and (options is None or isinstance(options, dict))):
            # Quotas need the token count of every stream; the client gets the usage chunk only if it asked.
            body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        reply: EngineReply = await answer(self._engine, endpoint, body, request_id)
        yield ReplyHead(reply.status, streaming=reply.stream is not None, body=reply.body)
        if reply.stream is None:
            return
        async for item in stream_items(reply.stream, client_wants_usage):
            yield item

    def stats(self) -> dict[str, Any]:
        return {"model": self._model.name, "unfinished_requests": self._engine.unfinished_requests(),
                "max_model_len": self._engine.max_model_len}

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self) -> None:
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.cancel()
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
        data_rank = getattr(self, "_data_rank", None)
        if data_rank is not None:
            leave_group(data_rank)
