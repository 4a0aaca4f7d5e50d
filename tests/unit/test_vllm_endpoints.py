"""The adapter's new endpoints against stand-ins for vLLM's serving classes: vLLM's own request models parse the
body, each answer shape (pydantic model, Starlette response, event stream) becomes a reply, and an endpoint the
model's task lacks is a 400; the replica counts a Responses stream's tokens from its final event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.responses import JSONResponse

from serve_app.llm_server import ReplyEnd, stream_items
from serve_app.vllm_adapter import VLLMEngine


class Serving:
    """Stands in for vLLM's serving classes: records each request and answers with a canned result."""

    def __init__(self, result: Any = None) -> None:
        self.requests: list[Any] = []
        self.result = result

    async def _answer(self, request: Any, raw_request: Any = None) -> Any:
        self.requests.append(request)
        return self.result

    create_tokenize = create_detokenize = create_responses = create_chat_completion = __call__ = _answer


def engine_with(task: str = "generate", **serving: Serving) -> VLLMEngine:
    return VLLMEngine(client=None, state=SimpleNamespace(openai_serving_models=None, **serving), task=task)


def test_tokenize_parses_a_prompt_or_messages_as_vllms_two_request_models() -> None:
    serving = Serving(SimpleNamespace(model_dump=lambda **_: {"tokens": [1], "count": 1}))
    engine = engine_with(serving_tokenization=serving)
    asyncio.run(engine.tokenize({"model": "m", "prompt": "hi"}, "r1"))
    asyncio.run(engine.tokenize({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "r2"))
    assert [type(request).__name__ for request in serving.requests] == ["TokenizeCompletionRequest",
                                                                         "TokenizeChatRequest"]
    reply = asyncio.run(engine.tokenize({"model": "m"}, "r3"))  # neither a prompt nor messages
    assert reply.status == 400 and reply.body["error"]["message"].startswith("invalid request")


def test_an_embeddings_answer_built_as_a_starlette_response_becomes_its_json_body() -> None:
    vectors = {"object": "list", "data": [{"index": 0, "embedding": [0.5, -1.0]}]}
    serving = Serving(JSONResponse(vectors))
    reply = asyncio.run(engine_with("embed", serving_embedding=serving).embeddings(
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}, "r1"))
    assert (reply.status, reply.body, reply.stream) == (200, vectors, None)
    assert serving.requests[0].encoding_format == "base64" and serving.requests[0].request_id == "r1"


@pytest.mark.parametrize("encoding", ["bytes", "bytes_only"])
def test_binary_embedding_encodings_are_refused(encoding: str) -> None:
    serving = Serving()
    reply = asyncio.run(engine_with("embed", serving_embedding=serving).embeddings(
        {"model": "m", "input": "a", "encoding_format": encoding}, "r1"))
    assert reply.status == 400 and reply.body["error"]["param"] == "encoding_format" and not serving.requests


@pytest.mark.parametrize(("task", "method"), [("embed", "chat"), ("embed", "responses"), ("generate", "embeddings")])
def test_an_endpoint_without_its_serving_class_is_a_400_naming_the_task(task: str, method: str) -> None:
    reply = asyncio.run(getattr(engine_with(task), method)({"model": "m", "input": "a", "messages": []}, "r1"))
    assert reply.status == 400 and f"task is {task}" in reply.body["error"]["message"]


class Event:
    """A Responses stream event as vLLM yields it: a pydantic model with a `type`."""

    def __init__(self, kind: str, sequence: int) -> None:
        self.type, self.sequence = kind, sequence

    def model_dump_json(self, **_: Any) -> str:
        return json.dumps({"type": self.type, "sequence_number": self.sequence})


def test_a_responses_stream_of_event_models_becomes_sse_events_and_its_id_gets_resp() -> None:
    async def events() -> AsyncIterator[Event]:
        yield Event("response.created", 0)
        yield Event("response.completed", 1)

    serving = Serving(events())

    async def ask() -> list[str]:
        reply = await engine_with(openai_serving_responses=serving).responses(
            {"model": "m", "input": "hi", "stream": True}, "abc")
        return [line async for line in reply.stream]

    lines = asyncio.run(ask())
    assert lines == ['event: response.created\ndata: {"type": "response.created", "sequence_number": 0}\n\n',
                     'event: response.completed\ndata: {"type": "response.completed", "sequence_number": 1}\n\n']
    assert serving.requests[0].request_id == "resp_abc"  # vLLM makes it the response id as it is


def test_the_replica_counts_a_responses_stream_from_its_final_event_and_sends_the_count_before_it() -> None:
    usage = {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
    chunks = ['event: response.output_text.delta\ndata: {"delta": "a"}\n\n',
              f'event: response.completed\ndata: {json.dumps({"response": {"usage": usage}})}\n\n']

    async def collect() -> list[object]:
        async def engine() -> AsyncIterator[str]:
            for chunk in chunks:
                yield chunk

        return [item async for item in stream_items(engine(), client_wants_usage=False)]

    assert asyncio.run(collect()) == [chunks[0], ReplyEnd(7, 2), chunks[1]]
