"""The adapter in front of vLLM's request models: a body they choke on is a 400 with an OpenAI error, never a 500."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app.vllm_adapter import VLLMEngine


class RecordingServing:
    """Stands in for vLLM's serving classes: records what reaches them and answers a plain body."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def create_chat_completion(self, request: Any, raw_request: Any) -> Any:
        return await self.create_completion(request, raw_request)

    async def create_completion(self, request: Any, raw_request: Any) -> Any:
        self.requests.append(request)
        return SimpleNamespace(model_dump=lambda **_: {"object": "text_completion"})


@pytest.fixture
def serving() -> RecordingServing:
    return RecordingServing()


@pytest.fixture
def engine(serving: RecordingServing) -> VLLMEngine:
    state = SimpleNamespace(openai_serving_chat=serving, openai_serving_completion=serving, openai_serving_models=None)
    return VLLMEngine(client=None, state=state)


@pytest.mark.parametrize(("endpoint", "body", "param"), [
    ("completions", {"prompt": "Hi", "structured_outputs": 5}, None),  # AttributeError in a vLLM validator
    ("chat", {"messages": [], "structured_outputs": "json"}, None),
    ("chat", {"messages": 3}, None),  # TypeError
    ("completions", {"prompt": "Hi", "temperature": "hot"}, "temperature"),  # an ordinary ValidationError
    # Unbounded in vLLM's model, then too large for msgpack on the way to the engine core.
    ("completions", {"prompt": "Hi", "stream": True, "stream_interval": 10**25}, "stream_interval"),
    ("chat", {"messages": [], "top_k": -(10**30)}, "top_k"),
])
def test_a_body_vllm_refuses_is_a_400(engine: VLLMEngine, serving: RecordingServing, endpoint: str,
                                      body: dict[str, Any], param: str | None) -> None:
    reply = asyncio.run(getattr(engine, endpoint)(body, "req-1"))
    assert reply.status == 400 and reply.stream is None and not serving.requests
    error = reply.body["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert error["message"].startswith("invalid request") and error["param"] == param


def test_a_valid_body_with_large_legal_integers_reaches_vllm(engine: VLLMEngine, serving: RecordingServing) -> None:
    body = {"prompt": [1, 2], "seed": 2**63 - 1, "max_tokens": 4, "vllm_xargs": {"a": 2**64 - 1}}
    reply = asyncio.run(engine.completions(body, "req-2"))
    assert reply.status == 200 and serving.requests[0].seed == 2**63 - 1
    assert serving.requests[0].request_id == "req-2"
