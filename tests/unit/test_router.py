"""The router's HTTP behaviour against fake model handles: routing, errors, auth, streaming, cold starts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve_app.admission import ModelQueue
from serve_app.config import RequestLimitsConfig, RouterConfig
from serve_app.llm_server import ReplyHead
from serve_app.router import ModelCatalog, ModelRoute, create_api
from serve_app.tenancy.keys import KeyStore, Quota, Tenant, digest_of
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


def test_failure_mid_stream_ends_with_an_error_event_once_attempts_run_out() -> None:
    async def breaks(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        yield ReplyHead(200, streaming=True)
        yield 'data: {"delta": "partial"}\n\n'
        raise RuntimeError("replica died")

    handle = FakeModelHandle(breaks)
    api = TestClient(create_api(ModelCatalog([route("m", handle)])))
    with api.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": [], "stream": True}) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert len(handle.calls) == 3  # router.max_attempts: the first replica, then two continuations
    assert events[0] == '{"delta": "partial"}'
    assert json.loads(events[-2])["error"]["code"] == 503
    assert events[-1] == "[DONE]"


def keyed(small: FakeModelHandle, large: FakeModelHandle, **settings: Any) -> TestClient:
    tenants = {digest_of("sk-good"): Tenant("team-small", frozenset({"small"}), Quota()),
               digest_of("sk-all"): Tenant("ops", None, Quota())}
    catalog = ModelCatalog([route("small", small, aliases=("default",)), route("large", large)])
    return TestClient(create_api(catalog, KeyStore(tenants), settings=RouterConfig(**settings)))


def as_key(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_api_keys_are_enforced(small: FakeModelHandle, large: FakeModelHandle) -> None:
    api = keyed(small, large)
    assert chat(api, "small").status_code == 401
    bad = api.post("/v1/chat/completions", json={"model": "small"}, headers=as_key("sk-bad"))
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "AuthenticationError"
    assert "sk-bad" not in bad.text
    good = api.post("/v1/chat/completions", json={"model": "small", "messages": []}, headers=as_key("sk-good"))
    assert good.status_code == 200
    assert api.get("/health").status_code == 200  # probes need no key


def test_health_needs_a_key_when_not_public(small: FakeModelHandle, large: FakeModelHandle) -> None:
    api = keyed(small, large, auth={"public_paths": []})
    assert api.get("/health").status_code == 401
    assert api.get("/health", headers=as_key("sk-all")).status_code == 200


def test_model_outside_the_keys_models_is_403(small: FakeModelHandle, large: FakeModelHandle) -> None:
    api = keyed(small, large)
    response = api.post("/v1/chat/completions", json={"model": "large", "messages": []}, headers=as_key("sk-good"))
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "PermissionDeniedError" and "team-small" in error["message"]
    assert "sk-good" not in response.text and large.calls == []
    by_alias = api.post("/v1/chat/completions", json={"model": "default", "messages": []}, headers=as_key("sk-good"))
    assert by_alias.status_code == 200


def test_models_list_and_404_show_only_the_keys_models(small: FakeModelHandle, large: FakeModelHandle) -> None:
    api = keyed(small, large)
    assert {c["id"] for c in api.get("/v1/models", headers=as_key("sk-good")).json()["data"]} == {"small", "default"}
    assert {c["id"] for c in api.get("/v1/models", headers=as_key("sk-all")).json()["data"]} == {
        "small", "default", "large"}
    missing = api.post("/v1/chat/completions", json={"model": "nope"}, headers=as_key("sk-good"))
    assert missing.status_code == 404 and "large" not in missing.json()["error"]["message"]


def test_body_over_the_limit_is_413(client: TestClient, small: FakeModelHandle, large: FakeModelHandle) -> None:
    api = keyed(small, large, max_body_bytes=2048)
    body = {"model": "small", "messages": [{"role": "user", "content": "x" * 4096}]}
    response = api.post("/v1/chat/completions", json=body, headers=as_key("sk-good"))
    assert response.status_code == 413 and "max_body_bytes" in response.json()["error"]["message"]
    assert small.calls == []


@pytest.mark.parametrize("header", ["x-request-timeout-seconds", "x-request-disconnect-disabled"])
def test_headers_that_steer_serves_proxy_are_refused(client: TestClient, header: str) -> None:
    response = client.post("/v1/chat/completions", json={"model": "small", "messages": []}, headers={header: "0"})
    assert response.status_code == 400 and response.json()["error"]["param"] == header


def test_unknown_path_and_wrong_method_are_openai_errors(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["code"] == 404
    wrong = client.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"]


def test_max_tokens_cap_is_applied_before_the_replica(small: FakeModelHandle) -> None:
    capped = ModelRoute(name="small", aliases=(), handle=small, cold_start_timeout_s=5, max_model_len=None, created=1,
                        limits=RequestLimitsConfig(max_tokens=16))
    api = TestClient(create_api(ModelCatalog([capped])))
    refused = chat(api, "small", max_tokens=17)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
    assert chat(api, "small").status_code == 200
    assert small.calls[-1][1]["max_completion_tokens"] == 16


def test_queue_past_its_bound_answers_at_once(small: FakeModelHandle) -> None:
    full = ModelQueue("small", bound=1, scales_to_zero=False, idle_after_s=60)
    full.enter()  # one request already waits for a replica
    bounded = ModelRoute(name="small", aliases=(), handle=small, cold_start_timeout_s=5, max_model_len=None,
                         created=1, queue=full)
    response = chat(TestClient(create_api(ModelCatalog([bounded]))), "small")
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
    assert small.calls == []


def test_queue_slots_are_freed_after_json_streams_and_failures(small: FakeModelHandle) -> None:
    queue = ModelQueue("small", bound=4, scales_to_zero=False, idle_after_s=60)
    api = TestClient(create_api(ModelCatalog([ModelRoute(name="small", aliases=(), handle=small,
                                                         cold_start_timeout_s=5, max_model_len=None, created=1,
                                                         queue=queue)])))
    chat(api, "small")
    with api.stream("POST", "/v1/chat/completions", json={"model": "small", "messages": [], "stream": True}) as r:
        list(r.iter_lines())
    assert (queue.waiting, queue.serving) == (0, 0)


def test_client_request_id_is_echoed(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "small", "messages": []},
                           headers={"x-request-id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"


class RecordingGate:
    """A quota gate that admits `budget` requests, then refuses; records what each admitted request used."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.finished: list[int | None] = []

    async def admit(self, key_name: str, prompt_tokens: int) -> Any:
        gate = self

        class Admission:
            admitted = gate.budget > 0
            limit = None if admitted else "requests"
            retry_after_s = None if admitted else 7
            headers = {"x-ratelimit-limit-requests": "2"}

            def finish(self, total_tokens: int | None) -> None:
                gate.finished.append(total_tokens)

        self.budget -= 1
        return Admission()


def test_quota_settles_usage_once_per_request_and_refuses_past_it(small: FakeModelHandle) -> None:
    gate = RecordingGate(budget=2)
    tenants = {digest_of("sk-q"): Tenant("team-q", None, Quota(rpm=2))}
    api = TestClient(create_api(ModelCatalog([route("small", small)]), KeyStore(tenants), gate))
    ok = api.post("/v1/chat/completions", json={"model": "small", "messages": []}, headers=as_key("sk-q"))
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "2"
    with api.stream("POST", "/v1/chat/completions", json={"model": "small", "messages": [], "stream": True},
                    headers=as_key("sk-q")) as streamed:
        lines = [line for line in streamed.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"  # the usage item never reaches the client
    refused = api.post("/v1/chat/completions", json={"model": "small", "messages": []}, headers=as_key("sk-q"))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
    assert "team-q" in refused.json()["error"]["message"] and "requests" in refused.json()["error"]["message"]
    assert gate.finished == [12, 12]


def test_quota_is_settled_when_the_replica_fails(small: FakeModelHandle) -> None:
    async def crashes(endpoint: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        raise RuntimeError("replica died")
        yield  # pragma: no cover

    gate = RecordingGate(budget=5)
    tenants = {digest_of("sk-q"): Tenant("team-q", None, Quota(max_concurrent=1))}
    api = TestClient(create_api(ModelCatalog([route("m", FakeModelHandle(crashes))]), KeyStore(tenants), gate))
    response = api.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=as_key("sk-q"))
    assert response.status_code == 503 and gate.finished == [None]
