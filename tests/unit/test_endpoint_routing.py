"""Every endpoint is routed by the body's `model`; one its model's task does not serve is a 400 naming the task;
new endpoints fail over as chat does before the first byte, and a broken Responses stream ends in an error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from serve_app.engine_protocol import Endpoint
from serve_app.llm_server import ReplyEnd, ReplyHead
from serve_app.router import ENDPOINT_PATHS, ModelCatalog, ModelRoute, create_api
from tests.fakes import FakeModelHandle, echo_script

BODIES = {
    Endpoint.CHAT: {"messages": [{"role": "user", "content": "hi"}]},
    Endpoint.COMPLETIONS: {"prompt": "hi"},
    Endpoint.RESPONSES: {"input": "hi"},
    Endpoint.EMBEDDINGS: {"input": ["hi", "there"]},
    Endpoint.TOKENIZE: {"prompt": "hi"},
    Endpoint.DETOKENIZE: {"tokens": [1, 2]},
}


def route(name: str, handle: FakeModelHandle, task: str = "generate") -> ModelRoute:
    return ModelRoute(name=name, aliases=(), handle=handle, cold_start_timeout_s=5, max_model_len=None, created=1,
                      task=task)


@pytest.fixture
def chat_model() -> FakeModelHandle:
    return FakeModelHandle(echo_script(["chat", "answer"]))


@pytest.fixture
def embed_model() -> FakeModelHandle:
    return FakeModelHandle(echo_script(["embed", "answer"]))


@pytest.fixture
def api(chat_model: FakeModelHandle, embed_model: FakeModelHandle) -> TestClient:
    return TestClient(create_api(ModelCatalog([route("chatty", chat_model), route("vectors", embed_model, "embed")])))


def test_every_endpoint_has_a_path() -> None:
    assert set(ENDPOINT_PATHS) == set(Endpoint)


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_each_endpoint_reaches_the_model_of_its_task_with_the_body_unchanged(
        api: TestClient, chat_model: FakeModelHandle, embed_model: FakeModelHandle, endpoint: Endpoint) -> None:
    model, handle = ("vectors", embed_model) if endpoint is Endpoint.EMBEDDINGS else ("chatty", chat_model)
    body = {"model": model, **BODIES[endpoint]}
    response = api.post(ENDPOINT_PATHS[endpoint], json=body)
    assert response.status_code == 200, response.text
    assert handle.calls == [(endpoint, body)]


@pytest.mark.parametrize("endpoint", [Endpoint.TOKENIZE, Endpoint.DETOKENIZE])
def test_an_embed_model_tokenizes_too(api: TestClient, embed_model: FakeModelHandle, endpoint: Endpoint) -> None:
    assert api.post(ENDPOINT_PATHS[endpoint], json={"model": "vectors", **BODIES[endpoint]}).status_code == 200
    assert [call[0] for call in embed_model.calls] == [endpoint]


@pytest.mark.parametrize(("endpoint", "model", "task"), [
    (Endpoint.CHAT, "vectors", "embed"), (Endpoint.COMPLETIONS, "vectors", "embed"),
    (Endpoint.RESPONSES, "vectors", "embed"), (Endpoint.EMBEDDINGS, "chatty", "generate")])
def test_an_endpoint_the_models_task_does_not_serve_is_a_400_naming_the_task(
        api: TestClient, chat_model: FakeModelHandle, embed_model: FakeModelHandle, endpoint: Endpoint, model: str,
        task: str) -> None:
    response = api.post(ENDPOINT_PATHS[endpoint], json={"model": model, **BODIES[endpoint]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and f"task {task!r}" in error["message"]
    assert ENDPOINT_PATHS[endpoint] in error["message"]
    assert chat_model.calls == [] and embed_model.calls == []


def test_the_openai_client_sees_the_wrong_task_as_a_bad_request(api: TestClient) -> None:
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=api, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="task 'generate'"):
        client.embeddings.create(model="chatty", input="hi")


def test_an_unknown_model_is_still_a_404_on_the_new_endpoints(api: TestClient) -> None:
    assert api.post("/v1/embeddings", json={"model": "nope", "input": "hi"}).status_code == 404


def dies_first(then: Any) -> Any:
    calls = {"n": 0}

    async def script(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("replica died")
        async for item in then(endpoint, body):
            yield item

    return script


@pytest.mark.parametrize("endpoint", [Endpoint.EMBEDDINGS, Endpoint.RESPONSES, Endpoint.TOKENIZE])
def test_a_replica_failing_before_the_first_byte_is_retried_on_the_new_endpoints(endpoint: Endpoint) -> None:
    handle = FakeModelHandle(dies_first(echo_script(["ok"])))
    task = "embed" if endpoint is Endpoint.EMBEDDINGS else "generate"
    api = TestClient(create_api(ModelCatalog([route("m", handle, task)])))
    response = api.post(ENDPOINT_PATHS[endpoint], json={"model": "m", **BODIES[endpoint]})
    assert response.status_code == 200 and response.json()["text"] == "ok"
    assert len(handle.calls) == 2


def response_event(kind: str, sequence: int, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': sequence, **fields})}\n\n"


async def responses_stream_that_dies(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
    yield ReplyHead(200, streaming=True)
    yield response_event("response.created", 0, response={"id": "resp_1"})
    yield response_event("response.output_text.delta", 1, delta="Par")
    raise RuntimeError("replica died")


def test_a_responses_stream_broken_mid_way_ends_with_an_error_event_not_a_continuation() -> None:
    handle = FakeModelHandle(responses_stream_that_dies)
    api = TestClient(create_api(ModelCatalog([route("m", handle)])))
    with api.stream("POST", "/v1/responses", json={"model": "m", "input": "hi", "stream": True}) as response:
        text = "".join(response.iter_text())
    events = [event for event in text.split("\n\n") if event]
    assert len(handle.calls) == 1  # not sent again: a Responses stream cannot be picked up mid-way
    assert events[-1].startswith("event: error\ndata: ") and "[DONE]" not in text
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and error["sequence_number"] == 2
    assert "responses streams cannot be continued" in error["message"]
    assert error["error"]["code"] == 503 and error["error"]["message"] == error["message"]


def test_the_openai_client_raises_on_that_error_event() -> None:
    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(responses_stream_that_dies))])))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=api, max_retries=0)
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for _ in client.responses.create(model="m", input="hi", stream=True):
            pass


def test_a_responses_stream_that_completed_before_breaking_is_left_as_it_was() -> None:
    async def completes_then_dies(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        yield ReplyHead(200, streaming=True)
        yield response_event("response.completed", 0, response={"usage": {"input_tokens": 3, "output_tokens": 1}})
        raise RuntimeError("replica died after its last event")

    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(completes_then_dies))])))
    with api.stream("POST", "/v1/responses", json={"model": "m", "input": "hi", "stream": True}) as response:
        text = "".join(response.iter_text())
    assert text.startswith("event: response.completed") and "event: error" not in text


def test_a_streamed_response_is_relayed_whole_with_its_usage_kept_from_the_client() -> None:
    async def streams(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        yield ReplyHead(200, streaming=True)
        yield response_event("response.output_text.delta", 0, delta="ok")
        yield ReplyEnd(prompt_tokens=3, completion_tokens=1)
        yield response_event("response.completed", 1, response={"usage": {"input_tokens": 3, "output_tokens": 1}})

    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(streams))])))
    with api.stream("POST", "/v1/responses", json={"model": "m", "input": "hi", "stream": True}) as response:
        events = [event for event in "".join(response.iter_text()).split("\n\n") if event]
    assert [event.split("\n")[0] for event in events] == ["event: response.output_text.delta",
                                                           "event: response.completed"]
