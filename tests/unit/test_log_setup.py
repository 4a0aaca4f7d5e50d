"""Log lines: text or JSON, each line about a request carrying its id, inside Serve and outside."""

from __future__ import annotations

import io
import json
import logging
import types
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_app.log_setup import bind_request_id, configure_logging, serve_logging_config, unbind_request_id
from serve_app.observability_config import LoggingSettings
from serve_app.request_id import RequestIdMiddleware

LOGGER = "serve_app.test_probe"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    target = logging.getLogger("serve_app")
    saved = (list(target.handlers), target.level, target.propagate)
    yield stream
    target.handlers[:], target.level, target.propagate = saved


def test_text_lines_name_the_request_when_there_is_one(captured: io.StringIO) -> None:
    configure_logging("text", logging.INFO, "serve_app", captured)
    logging.getLogger(LOGGER).info("outside")
    token = bind_request_id("req-42")
    try:
        logging.getLogger(LOGGER).info("inside")
    finally:
        unbind_request_id(token)
    outside, inside = captured.getvalue().splitlines()
    assert outside.endswith(f"INFO {LOGGER}: outside")
    assert inside.endswith(f"INFO {LOGGER} [req-42]: inside")


def test_json_lines_are_objects_with_the_request_id(captured: io.StringIO) -> None:
    configure_logging("json", logging.INFO, "serve_app", captured)
    token = bind_request_id("req-7")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger(LOGGER).exception("failed for %s", "chat")
    finally:
        unbind_request_id(token)
    entry = json.loads(captured.getvalue())
    assert entry["level"] == "ERROR" and entry["logger"] == LOGGER and entry["message"] == "failed for chat"
    assert entry["request_id"] == "req-7" and "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("+00:00")


def test_configuring_again_replaces_the_handler(captured: io.StringIO) -> None:
    configure_logging("text", logging.INFO, "serve_app", captured)
    configure_logging("json", logging.INFO, "serve_app", captured)
    logging.getLogger(LOGGER).info("once")
    assert len(captured.getvalue().splitlines()) == 1
    assert not logging.getLogger("serve_app").propagate


def test_lines_logged_while_serving_a_request_carry_its_id(captured: io.StringIO) -> None:
    configure_logging("json", logging.INFO, "serve_app", captured)

    async def endpoint(request: object) -> PlainTextResponse:
        logging.getLogger(LOGGER).info("handling")
        return PlainTextResponse("ok")

    app = RequestIdMiddleware(Starlette(routes=[Route("/", endpoint)]))
    response = TestClient(app).get("/", headers={"X-Request-Id": "client-chosen-1"})
    assert response.headers["x-request-id"] == "client-chosen-1"
    assert json.loads(captured.getvalue())["request_id"] == "client-chosen-1"


def test_inside_serve_the_id_comes_from_serves_request_context(captured: io.StringIO,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # What a Serve replica has while it serves a request: the id Serve's proxy took from X-Request-Id.
    context = types.ModuleType("ray.serve.context")
    context._get_serve_request_context = lambda: types.SimpleNamespace(request_id="serve-req-9")
    monkeypatch.setitem(__import__("sys").modules, "ray.serve.context", context)
    configure_logging("text", logging.INFO, "serve_app", captured)
    logging.getLogger(LOGGER).info("in a replica")
    assert "[serve-req-9]: in a replica" in captured.getvalue()


def test_serve_logs_json_files_only_with_the_json_format() -> None:
    assert serve_logging_config(LoggingSettings(format="json")) == {"encoding": "JSON"}
    assert serve_logging_config(LoggingSettings()) is None
