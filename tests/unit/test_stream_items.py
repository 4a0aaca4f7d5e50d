"""The replica's stream: the token count travels just before [DONE], and the usage chunk only when asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serve_app.llm_server import ReplyEnd, stream_items

USAGE = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
CHUNKS = ['data: {"id":"c","choices":[{"delta":{"content":"a"}}]}\n\n',
          'data: {"id":"c","choices":[{"delta":{"content":"b"}}]}\n\n', USAGE, "data: [DONE]\n\n"]


async def engine(chunks: list[str]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk


def items(chunks: list[str], wants_usage: bool) -> list[object]:
    async def collect() -> list[object]:
        return [item async for item in stream_items(engine(chunks), wants_usage)]

    return asyncio.run(collect())


def test_the_count_comes_before_done_so_a_client_hanging_up_on_done_loses_nothing() -> None:
    got = items(CHUNKS, wants_usage=False)
    assert got == [*CHUNKS[:2], ReplyEnd(7, 2), "data: [DONE]\n\n"]


def test_a_client_that_asked_for_usage_gets_the_usage_chunk() -> None:
    got = items(CHUNKS, wants_usage=True)
    assert got == [*CHUNKS[:3], ReplyEnd(7, 2), "data: [DONE]\n\n"]


def test_a_stream_without_done_still_ends_with_its_count() -> None:
    assert items(CHUNKS[:3], wants_usage=False) == [*CHUNKS[:2], ReplyEnd(7, 2)]
