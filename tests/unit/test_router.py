"""The router's HTTP behaviour against fake model handles: routing, errors, auth, streaming, cold starts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve_app.llm_server import ReplyHead
from serve_app.router import ModelCatalog, ModelRoute, create_api
from tests.fakes import FakeModelHandle, echo_script


def route(name: str, handle: FakeModelHandle, aliases: tuple[str, ...] = (), cold_start_s: float = 5.0) -> ModelRoute:
    return ModelRoute(name=name, aliases=aliases, handle=handle, cold_start_timeout_s=cold_start_s,
                      max_model_len=4096, created=1)


@pytest.fixture
def small() -> FakeModelHandle:
    return FakeModelHandle(echo_script(["small", "answer"]))


@pytest.fixture
def large() -> FakeModelHandle:
    return FakeModelHandle(echo_script(["large", "answer"]))


@pytest.fixture
def client(small: FakeModelHandle, large: FakeModelHandle) -> TestClient:
    catalog = ModelCatalog([route("small", small, aliases=("default",)), route("large", large)])
    return TestClient(create_api(catalog))


def chat(client: TestClient, model: Any, **extra: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [], **extra})


def test_routes_by_name_and_alias(client: TestClient, small: FakeModelHandle, large: FakeModelHandle) -> None:
    assert chat(client, "large").json()["text"] == "large answer"
    assert chat(client, "default").json()["text"] == "small answer"
    assert [c[0] for c in small.calls] == ["chat"] and [c[0] for c in large.calls] == ["chat"]


def test_completions_endpoint_reaches_model(client: TestClient, small: FakeModelHandle) -> None:
    response = client.post("/v1/completions", json={"model": "small", "prompt": "hi"})
    assert response.status_code == 200
    assert small.calls == [("completions", {"model": "small", "prompt": "hi"})]


def test_unknown_model_is_404_listing_served_models(client: TestClient) -> None:
    response = chat(client, "gpt-17")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "NotFoundError" and error["param"] == "model"
    assert "small" in error["message"] and "large" in error["message"] and "default" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_body_is_400(client: TestClient, payload: bytes) -> None:
    response = client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"


@pytest.mark.parametrize("model", [None, 3, ["small"]])
def test_missing_or_non_string_model_is_400(client: TestClient, model: Any) -> None:
    response = chat(client, model)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


def test_models_lists_names_and_aliases(client: TestClient) -> None:
    cards = client.get("/v1/models").json()["data"]
    assert {c["id"] for c in cards} == {"small", "default", "large"}
    assert all(c["owned_by"] == "llmcluster" and c["max_model_len"] == 4096 for c in cards)


def test_context_length_not_in_the_config_is_the_one_the_engine_reports() -> None:
    handle = FakeModelHandle(echo_script(["hi"]), max_model_len=8192)
    unset = ModelRoute(name="m", aliases=(), handle=handle, cold_start_timeout_s=5, max_model_len=None, created=1)
    client = TestClient(create_api(ModelCatalog([unset])))
    assert "max_model_len" not in client.get("/v1/models").json()["data"][0]  # no replica has answered yet
    assert chat(client, "m").status_code == 200
    assert client.get("/v1/models").json()["data"][0]["max_model_len"] == 8192


def test_streaming_passes_chunks_through(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "small", "messages": [], "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events == ['data: {"delta": "small"}', 'data: {"delta": "answer"}', "data: [DONE]"]


def test_engine_error_status_and_body_are_kept() -> None:
    async def rejects(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        yield ReplyHead(400, streaming=False, body={"error": {"message": "max_tokens must be at least 1",
                                                              "type": "BadRequestError", "code": 400}})

    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(rejects))])))
    response = chat(api, "m", max_tokens=-1)
    assert response.status_code == 400
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


def test_cold_model_past_timeout_is_503_with_retry_after() -> None:
    slow = FakeModelHandle(echo_script(["late"]), start_delay_s=2.0)
    api = TestClient(create_api(ModelCatalog([route("cold", slow, cold_start_s=0.2)])))
    response = chat(api, "cold")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert "starting" in response.json()["error"]["message"]
    assert slow.replies[0].cancelled


def test_cold_model_within_timeout_is_answered() -> None:
    slow = FakeModelHandle(echo_script(["warm", "now"]), start_delay_s=0.2)
    api = TestClient(create_api(ModelCatalog([route("cold", slow, cold_start_s=5)])))
    assert chat(api, "cold").json()["text"] == "warm now"


def test_replica_failure_before_reply_is_503() -> None:
    async def crashes(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        raise RuntimeError("replica died")
        yield  # pragma: no cover - makes this an async generator

    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(crashes))])))
    response = chat(api, "m")
    assert response.status_code == 503 and response.json()["error"]["type"] == "ServiceUnavailableError"


def test_failure_mid_stream_ends_with_an_error_event() -> None:
    async def breaks(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        yield ReplyHead(200, streaming=True)
        yield 'data: {"delta": "partial"}\n\n'
        raise RuntimeError("replica died")

    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(breaks))])))
    with api.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": [], "stream": True}) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0] == '{"delta": "partial"}'
    assert json.loads(events[1])["error"]["code"] == 503
    assert events[-1] == "[DONE]"


def test_api_keys_are_enforced(small: FakeModelHandle) -> None:
    api = TestClient(create_api(ModelCatalog([route("small", small)]), api_keys=frozenset({"sk-good"})))
    assert chat(api, "small").status_code == 401
    bad = api.post("/v1/chat/completions", json={"model": "small"}, headers={"authorization": "Bearer sk-bad"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "AuthenticationError"
    good = api.post("/v1/chat/completions", json={"model": "small", "messages": []},
                    headers={"authorization": "Bearer sk-good"})
    assert good.status_code == 200
    assert api.get("/health").status_code == 200  # probes need no key


def test_client_request_id_is_echoed(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "small", "messages": []},
                           headers={"x-request-id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
