"""Fakes with the surface of a Serve DeploymentHandle, for router tests that need no Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.llm_server import Accepted, ReplyEnd, ReplyHead


class FakeReplies:
    """What `handle.options(stream=True).generate.remote(...)` returns: an async iterator with cancel()."""

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items
        self.cancelled = False

    def __aiter__(self) -> FakeReplies:
        return self

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeModelHandle:
    """Answers like an engine replica; `script(endpoint, body)` yields the items after Accepted."""

    script: Callable[[str, dict[str, Any]], AsyncIterator[Any]]
    start_delay_s: float = 0.0
    max_model_len: int | None = None  # the context length the fake engine reports
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    replies: list[FakeReplies] = field(default_factory=list)

    def options(self, **_: Any) -> FakeModelHandle:
        return self

    @property
    def generate(self) -> FakeModelHandle:
        return self

    def remote(self, endpoint: str, body: dict[str, Any], request_id: str) -> FakeReplies:
        self.calls.append((endpoint, body))
        replies = FakeReplies(self._run(endpoint, body))
        self.replies.append(replies)
        return replies

    async def _run(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        await asyncio.sleep(self.start_delay_s)
        yield Accepted(self.max_model_len)
        async for item in self.script(endpoint, body):
            yield item


def echo_script(words: list[str]) -> Callable[[str, dict[str, Any]], AsyncIterator[Any]]:
    """A model that answers with `words`: as SSE chunks when the body streams, else one JSON body."""

    async def script(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        if not body.get("stream"):
            usage = {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}
            yield ReplyHead(200, streaming=False, body={"model": body["model"], "text": " ".join(words), "usage": usage})
            return
        yield ReplyHead(200, streaming=True)
        for word in words:
            yield f"data: {json.dumps({'delta': word})}\n\n"
        yield ReplyEnd(prompt_tokens=10, completion_tokens=len(words))  # before [DONE], as LLMServer sends it
        yield "data: [DONE]\n\n"

    return script
