"""The shapes vLLM's OpenAI layer answers in (pydantic models, Starlette responses, event streams) as replies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from serve_app.engine_protocol import EngineReply


def json_reply(result: Any) -> EngineReply:
    """A non-streaming answer: a pydantic response model, or a Starlette JSON response (the pooling endpoints
    build their own, with orjson)."""
    if hasattr(result, "model_dump"):
        # by_alias: the Responses API's models name some fields by alias, as vLLM's own route writes them.
        return EngineReply(200, result.model_dump(mode="json", by_alias=True))
    return EngineReply(result.status_code, json.loads(bytes(result.body)))


async def sse_lines(stream: AsyncIterator[Any]) -> AsyncIterator[str]:
    """A stream as SSE lines: chat and completions streams are lines already; the Responses API streams event
    models, each sent as its `event:` line and `data:` line, as vLLM's own route sends them."""
    async for item in stream:
        if isinstance(item, str):
            yield item
        else:
            yield f"event: {getattr(item, 'type', 'unknown')}\ndata: {item.model_dump_json(by_alias=True)}\n\n"
