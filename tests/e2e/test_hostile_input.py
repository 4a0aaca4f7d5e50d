"""Hostile input on the real stack: vLLM's own schema fuzzed, odd bodies, raw bytes; no 5xx, no hang, OpenAI errors."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Server
from tests.hostile import (
    CHAT, COMPLETIONS, HostileRequest, bound_cost, check_error_body, check_reply, encode, hostile_bodies,
    raw_noise)

MODEL = "smollm2"
HANG_S = 60  # no reply within this is a hang
SCHEMA_EXAMPLES = 75  # per endpoint and generation mode: 300 schema cases in all
BODY_EXAMPLES = 150
RAW = raw_noise(MODEL)
WIRE_WAIT_S = 5
GOOD_BODY = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 4}).encode()
# The engine makes the run slow, not the number of cases: shrinking would replay failures many times over,
# so a failure is reported as generated.
FUZZ_SETTINGS = settings(deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=HANG_S) as client:
        yield client


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    yield counts
    print(f"\nhostile input on the real stack, cases per kind: {dict(counts)}")


def send_checked(api: httpx.Client, request: HostileRequest) -> str:
    sent = f"POST {request.path} {request.headers} {request.content[:1500]!r}"
    try:
        response = request.send(api)
    except httpx.TimeoutException:
        pytest.fail(f"hang: no reply within {HANG_S}s to {sent}")
    try:
        return check_reply(response, request.expect or request.engine_expect)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrequest: {sent}") from None


@pytest.fixture(scope="module")
def vllm_schema() -> Any:
    import schemathesis

    from tests.e2e.vllm_openapi import vllm_openapi_schema

    return schemathesis.openapi.from_dict(vllm_openapi_schema())


def schema_request(case: Any, wrong_model: str | None, stream: bool) -> HostileRequest:
    """A case generated from vLLM's schema, made cheap by bound_cost and pointed at the served model."""
    kwargs = case.as_transport_kwargs(base_url="")
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() in ("content-type", "accept")}
    if "json" in kwargs:
        body = bound_cost(kwargs["json"], wrong_model or MODEL, stream)
        if isinstance(body, dict) and case.path == COMPLETIONS and "prompt" not in body:
            # vLLM's schema leaves `prompt` optional and refuses a body without one at run time: without
            # this, nearly every schema case would stop at that one check and never reach the engine.
            body["prompt"] = "Hi"
        wrong = isinstance(body, dict) and wrong_model is not None and body.get("model") == wrong_model
        return HostileRequest(case.path, encode(body), headers, expect=(404,) if wrong else None)
    data = kwargs.get("data", b"")
    return HostileRequest(case.path, data if isinstance(data, bytes) else str(data).encode(), headers)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_vllm_schema_cases(api: httpx.Client, vllm_schema: Any, tally: Counter[str], path: str,
                           mode: str) -> None:
    """schemathesis over vLLM's own OpenAPI schema: bodies that fit it (positive) and bodies that do not."""
    from schemathesis.generation.modes import GenerationMode

    cases = vllm_schema[path]["POST"].as_strategy(generation_mode=GenerationMode(mode))
    wrong_models = st.one_of(st.none(), st.none(), st.none(), st.text(min_size=1, max_size=12)).filter(
        lambda name: name not in (MODEL, "default"))
    outcomes: Counter[str] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=SCHEMA_EXAMPLES)
    @given(case=cases, wrong_model=wrong_models, stream=st.booleans())
    def fuzz(case: Any, wrong_model: str | None, stream: bool) -> None:
        outcomes[send_checked(api, schema_request(case, wrong_model, stream))] += 1

    fuzz()
    tally[f"schemathesis {path} {mode}"] += sum(outcomes.values())
    print(f"\nschemathesis {path} {mode}: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert sum(outcomes.values()) >= SCHEMA_EXAMPLES // 2, f"too few cases ran: {dict(outcomes)}"


def test_hypothesis_bodies(api: httpx.Client, tally: Counter[str]) -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ_SETTINGS, max_examples=BODY_EXAMPLES)
    @given(request=hostile_bodies(MODEL))
    def fuzz(request: HostileRequest) -> None:
        outcomes[send_checked(api, request)] += 1

    fuzz()
    tally["hypothesis bodies"] += sum(outcomes.values())
    print(f"\nhypothesis bodies: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert sum(outcomes.values()) >= BODY_EXAMPLES // 2, f"too few cases ran: {dict(outcomes)}"


@pytest.mark.parametrize("name", list(RAW))
def test_raw_noise(api: httpx.Client, tally: Counter[str], name: str) -> None:
    tally["raw noise"] += 1
    send_checked(api, RAW[name])


@dataclass(frozen=True)
class WireCase:
    """A request only a hand-written client sends: framing that lies about the body."""

    headers: bytes
    body: bytes = GOOD_BODY
    must_answer: bool = False  # the server holds all it needs to answer at once
    protocol_error: bool = False  # the HTTP server rejects it before any app code: the body is not ours to shape


# A body shorter than its Content-Length is indistinguishable from a slow client: the server may rightly wait
# for the rest (or answer 408 or 413 when it bounds the read), so the client's short wait running out is no hang.
# What must hold is that no 5xx comes and that the server serves the next request.
WIRE = {
    "content_length_lie_huge": WireCase(b"Content-Length: 1000000\r\n"),
    "content_length_lie_small": WireCase(b"Content-Length: 4096\r\n"),
    # The bytes past the declared length read as a second, broken request: the HTTP server may answer that first.
    "content_length_short": WireCase(b"Content-Length: 10\r\n", must_answer=True, protocol_error=True),
    "content_length_not_a_number": WireCase(b"Content-Length: abc\r\n", protocol_error=True),
    "bad_chunk_size": WireCase(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n", protocol_error=True),
    "length_and_chunked": WireCase(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                                   protocol_error=True),
}


def wire_exchange(port: int, case: WireCase) -> tuple[int, bytes] | None:
    """Sends the hand-made request; the reply's status and body, or None when none came within WIRE_WAIT_S."""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=WIRE_WAIT_S) as sock:
        sock.sendall(head + case.headers + b"\r\n" + case.body)
        response = HTTPResponse(sock)
        try:
            response.begin()
            return response.status, response.read()
        except (TimeoutError, ConnectionError, HTTPException):
            return None


@pytest.mark.parametrize("name", WIRE)
def test_lying_framing(server: Server, api: httpx.Client, tally: Counter[str], name: str) -> None:
    tally["wire framing"] += 1
    case = WIRE[name]
    reply = wire_exchange(server.port, case)
    print(f"\n{name}: {'no reply' if reply is None else reply[0]}")
    if reply is None:
        assert not case.must_answer, f"{name}: no reply within {WIRE_WAIT_S}s though the request was complete"
    else:
        status, body = reply
        assert 400 <= status < 500, f"{name}: {status} {body[:400]!r}"
        if not case.protocol_error:
            check_error_body(json.loads(body), f"{name}: {body[:400]!r}")
    assert api.post(COMPLETIONS, content=GOOD_BODY).status_code == 200, f"the stack is hurt after {name}"


def test_stack_still_answers_after_the_fuzzing(api: httpx.Client) -> None:
    response = api.post(CHAT, json={
        "model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 16})
    assert response.status_code == 200 and "Paris" in response.json()["choices"][0]["message"]["content"]
