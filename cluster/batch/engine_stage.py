"""The engine stage of a batch job: one model replica answering request rows through vLLM's OpenAI layer."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import numpy as np

from cluster.batch.output import answer_row, encode
from serve_app.config import ModelConfig
from serve_app.engine_protocol import Endpoint, Engine, answer
from serve_app.llm_server import engine_spec
from serve_app.model_source import resolve_source
from serve_app.vllm_adapter import VLLMEngine

logger = logging.getLogger(__name__)

# Without --max-in-flight a replica keeps this many times the engine's batch of sequences in flight, so the
# scheduler always finds the next requests waiting when sequences finish.
IN_FLIGHT_PER_SEQUENCE = 2
ANSWER_COLUMNS = ("output", "prompt_tokens", "completion_tokens", "failed", "started_at")


class EngineStage:
    """Ray Data callable class: one engine per actor, answering every row of the batches it is given.

    The engine lives on an event loop of its own, started with the actor, so an actor is ready only once its
    engine is; Ray Data's calls (many at once) hand their rows over to that loop and wait for the answers."""

    def __init__(self, model: ModelConfig, max_in_flight: int | None = None,
                 engine_cls: type[Engine] = VLLMEngine) -> None:
        from ray.util import get_current_placement_group

        self._loop = asyncio.new_event_loop()
        # The engine starts on this thread, which runs as long as the actor: its processes watch it with a
        # parent-death signal (vllm_adapter.fate_share_engine_process), so they die with the actor.
        threading.Thread(target=self._loop.run_forever, name="batch-engine-loop", daemon=True).start()
        start = self._start(model, max_in_flight, engine_cls, get_current_placement_group())
        self._engine, self._slots = self._on_loop(start).result()

    def _on_loop(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    @staticmethod
    async def _start(model: ModelConfig, max_in_flight: int | None, engine_cls: type[Engine],
                     placement_group: Any) -> tuple[Engine, asyncio.Semaphore]:
        model_path = await asyncio.to_thread(resolve_source, model.source)
        logger.info("starting engine for %s from %s", model.name, model_path)
        engine = await engine_cls.start(engine_spec(model, model_path), placement_group=placement_group)
        in_flight = max_in_flight or IN_FLIGHT_PER_SEQUENCE * engine.max_num_seqs
        logger.info("engine ready; keeping up to %d requests in flight", in_flight)
        return engine, asyncio.Semaphore(in_flight)

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values)) for values in zip(*(column.tolist() for column in batch.values()))]
        answers = await asyncio.gather(*(asyncio.wrap_future(self._on_loop(self._answer(row))) for row in rows))
        return {column: [answer[column] for answer in answers] for column in ANSWER_COLUMNS}

    async def _answer(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["output"]:  # a line that was no request: its error row is ready
            return {"output": row["output"], "prompt_tokens": 0, "completion_tokens": 0, "failed": True,
                    "started_at": math.nan}
        request_id = f"req_{uuid.uuid4().hex}"
        async with self._slots:
            started_at = time.time()  # wall clock: the driver compares it with its own, maybe on another node
            reply = await answer(self._engine, Endpoint(row["endpoint"]), json.loads(row["body"]), request_id)
        if reply.status >= 500:
            # A dead engine raises here, failing the job instead of writing an error for every row left;
            # a rerun resumes once the cause is fixed.
            await self._engine.check_health()
        usage = (reply.body or {}).get("usage") or {}
        return {"output": encode(answer_row(row["id"], row["custom_id"], request_id, reply.status, reply.body)),
                "prompt_tokens": usage.get("prompt_tokens") or 0,
                "completion_tokens": usage.get("completion_tokens") or 0,
                "failed": reply.status != 200, "started_at": started_at}

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
