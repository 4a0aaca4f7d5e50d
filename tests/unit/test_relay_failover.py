"""Failover in the router against fake replicas: retries before the first byte, continuation mid-stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.testclient import TestClient

from serve_app.llm_server import ReplyEnd, ReplyHead
from serve_app.router import ModelCatalog, ModelRoute, create_api
from tests.fakes import FakeModelHandle

QUESTION = [{"role": "user", "content": "Count"}]


def api_for(handle: FakeModelHandle) -> TestClient:
    route = ModelRoute(name="m", aliases=(), handle=handle, cold_start_timeout_s=5, max_model_len=None, created=1)
    return TestClient(create_api(ModelCatalog([route])))


def chunk(stream_id: str, content: str | None = None, role: bool = False) -> str:
    delta = {"role": "assistant", "content": ""} if role else {"content": content}
    event = {"id": stream_id, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


def dies_on_first_calls(failures: int, then: Any) -> Any:
    calls = {"n": 0}

    async def script(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise RuntimeError("replica died")
        async for item in then(endpoint, body):
            yield item

    return script


async def answers(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
    yield ReplyHead(200, streaming=False, body={"text": "ok", "usage": {"total_tokens": 3}})


def test_a_replica_failing_before_the_first_byte_is_retried_invisibly() -> None:
    handle = FakeModelHandle(dies_on_first_calls(2, answers))
    response = api_for(handle).post("/v1/chat/completions", json={"model": "m", "messages": QUESTION})
    assert response.status_code == 200 and response.json()["text"] == "ok"
    assert len(handle.calls) == 3


def test_past_the_attempts_the_client_gets_503() -> None:
    handle = FakeModelHandle(dies_on_first_calls(5, answers))
    response = api_for(handle).post("/v1/chat/completions", json={"model": "m", "messages": QUESTION})
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert len(handle.calls) == 3


def test_an_engine_4xx_is_never_retried() -> None:
    async def refuses(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        yield ReplyHead(400, streaming=False, body={"error": {"message": "bad", "type": "BadRequestError"}})

    handle = FakeModelHandle(refuses)
    assert api_for(handle).post("/v1/chat/completions", json={"model": "m"}).status_code == 400
    assert len(handle.calls) == 1


def stream_that_breaks_after(words: list[str]) -> Any:
    """The first call streams `words` and dies; later calls stream the rest of the answer, "three four"."""
    calls = {"n": 0}

    async def script(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        calls["n"] += 1
        yield ReplyHead(200, streaming=True)
        if calls["n"] == 1:
            yield chunk("chatcmpl-first", role=True)
            for word in words:
                yield chunk("chatcmpl-first", word)
            raise RuntimeError("replica died")
        yield chunk("chatcmpl-second", role=True)
        for word in (" three", " four"):
            yield chunk("chatcmpl-second", word)
        yield ReplyEnd(prompt_tokens=12, completion_tokens=2)
        yield "data: [DONE]\n\n"

    return script


def test_a_stream_broken_mid_way_continues_on_another_replica_as_one_stream() -> None:
    handle = FakeModelHandle(stream_that_breaks_after(["one", " two"]))
    body = {"model": "m", "messages": QUESTION, "stream": True, "max_tokens": 10}
    with api_for(handle).stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-first"}
    assert sum("role" in c["choices"][0]["delta"] for c in chunks) == 1
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "one two three four"
    continuation = handle.calls[1][1]
    assert continuation["messages"][-1] == {"role": "assistant", "content": "one two"}
    assert continuation["continue_final_message"] is True and continuation["add_generation_prompt"] is False
    assert continuation["max_tokens"] == 8


def test_a_completion_stream_continues_from_its_prompt_and_text() -> None:
    calls: list[dict[str, Any]] = []

    async def script(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        calls.append(body)
        yield ReplyHead(200, streaming=True)
        if len(calls) == 1:
            yield 'data: {"id":"cmpl-1","choices":[{"index":0,"text":" Paris"}]}\n\n'
            raise RuntimeError("replica died")
        yield 'data: {"id":"cmpl-2","choices":[{"index":0,"text":"."}]}\n\n'
        yield "data: [DONE]\n\n"

    api = api_for(FakeModelHandle(script))
    with api.stream("POST", "/v1/completions", json={"model": "m", "prompt": "Capital:", "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert calls[1]["prompt"] == "Capital: Paris"
    assert lines[1] == 'data: {"id":"cmpl-1","choices":[{"index":0,"text":"."}]}' and lines[-1] == "data: [DONE]"


def test_a_stream_that_cannot_be_continued_ends_with_an_error_event() -> None:
    handle = FakeModelHandle(stream_that_breaks_after(["one"]))
    body = {"model": "m", "messages": QUESTION, "stream": True, "n": 2}
    with api_for(handle).stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    error = json.loads(events[-2])["error"]
    assert "n > 1" in error["message"] and events[-1] == "[DONE]"
    assert len(handle.calls) == 1


def test_token_bounds_of_a_continuation_count_what_was_sent() -> None:
    from serve_app.continuation import SentSoFar, continuation_body

    body = {"model": "m", "prompt": "x", "max_tokens": 50, "min_tokens": 20}
    assert continuation_body("completions", body, SentSoFar("id", " y", 30)) == {
        "model": "m", "prompt": "x y", "max_tokens": 20, "min_tokens": 0}
    exhausted = continuation_body("completions", body, SentSoFar("id", " y", 50))
    assert "all its tokens" in exhausted.reason
