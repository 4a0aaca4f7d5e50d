"""The OpenAI-compatible router: authenticates, finds the model's deployment and relays its reply."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.config import ClusterConfig, RouterConfig
from serve_app.errors import openai_error
from serve_app.llm_server import Accepted, ReplyHead

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
COLD_START_RETRY_AFTER_S = 30


@dataclass
class ModelRoute:
    """One served model as the router sees it: its names, its deployment handle and its limits.

    `max_model_len` is the config's; without one, the engine's, learnt from the first reply of a replica."""

    name: str
    aliases: tuple[str, ...]
    handle: Any  # a Serve DeploymentHandle, or a fake with the same surface in tests
    cold_start_timeout_s: float
    max_model_len: int | None
    created: int


class ModelCatalog:
    """Maps every served name and alias to its route."""

    def __init__(self, routes: list[ModelRoute]) -> None:
        self.routes = routes
        self._by_name = {name: route for route in routes for name in (route.name, *route.aliases)}

    def find(self, name: str) -> ModelRoute | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)


def error_response(status: int, message: str, request_id: str, *, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = openai_error(status, message, param=param, request_id=request_id)
    return JSONResponse(body, status_code=status, headers={REQUEST_ID_HEADER: request_id, **(headers or {})})


def create_api(catalog: ModelCatalog, api_keys: frozenset[str] = frozenset()) -> FastAPI:
    """The router's FastAPI app; every dependency is passed in, so tests can drive it with fakes."""
    app = FastAPI(title="llmcluster", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        request.state.request_id = request.headers.get(REQUEST_ID_HEADER) or f"req-{uuid.uuid4().hex}"
        if api_keys and request.url.path.startswith("/v1/") and _bearer(request) not in api_keys:
            return error_response(401, "missing or invalid API key; send `Authorization: Bearer <key>`",
                                  request.state.request_id)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name, route) for route in catalog.routes
                                           for name in (route.name, *route.aliases)]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _relay(catalog, "chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _relay(catalog, "completions", request)

    return app


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _model_card(name: str, route: ModelRoute) -> dict[str, Any]:
    card = {"id": name, "object": "model", "created": route.created, "owned_by": "llmcluster",
            "root": route.name}
    if route.max_model_len:
        card["max_model_len"] = route.max_model_len
    return card


async def _relay(catalog: ModelCatalog, endpoint: str, request: Request) -> Response:
    request_id = request.state.request_id
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error_response(400, f"request body is not valid JSON: {exc}", request_id)
    if not isinstance(body, dict):
        return error_response(400, "request body must be a JSON object", request_id)
    model = body.get("model")
    if not isinstance(model, str):
        return error_response(400, "`model` is required and must be a string", request_id, param="model")
    route = catalog.find(model)
    if route is None:
        return error_response(404, f"model {model!r} does not exist; served models: "
                                   f"{', '.join(catalog.names)}", request_id, param="model")
    return await _call_model(route, endpoint, body, request_id)


async def _call_model(route: ModelRoute, endpoint: str, body: dict[str, Any], request_id: str) -> Response:
    replies = route.handle.options(stream=True).generate.remote(endpoint, body, request_id)
    try:
        # The first item only says a replica took the request, so this bounds the wait for a cold model.
        accepted: Accepted = await asyncio.wait_for(anext(replies), timeout=route.cold_start_timeout_s)
        head: ReplyHead = await anext(replies)
    except TimeoutError:
        replies.cancel()
        return error_response(503, f"model {route.name!r} is starting; retry shortly", request_id,
                              headers={"Retry-After": str(COLD_START_RETRY_AFTER_S)})
    except asyncio.CancelledError:
        replies.cancel()
        raise
    except Exception:
        logger.exception("request %s to model %s failed", request_id, route.name)
        return error_response(503, f"model {route.name!r} is unavailable; retry shortly", request_id,
                              headers={"Retry-After": "5"})
    if route.max_model_len is None:
        route.max_model_len = accepted.max_model_len
    headers = {REQUEST_ID_HEADER: request_id}
    if not head.streaming:
        if head.status >= 400 and isinstance(head.body, dict) and isinstance(head.body.get("error"), dict):
            head.body["error"].setdefault("request_id", request_id)
        return JSONResponse(head.body, status_code=head.status, headers=headers)
    return StreamingResponse(_relay_stream(replies, route.name, request_id), media_type="text/event-stream",
                             headers=headers)


async def _relay_stream(replies: Any, model: str, request_id: str) -> AsyncIterator[str]:
    try:
        async for chunk in replies:
            yield chunk
    except asyncio.CancelledError:
        raise
    except Exception:
        # Headers are gone already: the error travels as a final SSE event, so no stream ends silently.
        logger.exception("stream %s from model %s broke", request_id, model)
        error = openai_error(503, f"model {model!r} failed mid-stream; retry", request_id=request_id)
        yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n"
    finally:
        # A client that hangs up cancels this generator: pass that on so the engine aborts the request.
        replies.cancel()


def load_api_keys(config: RouterConfig) -> frozenset[str]:
    if not config.api_keys_env:
        return frozenset()
    keys = frozenset(k.strip() for k in os.environ.get(config.api_keys_env, "").split(",") if k.strip())
    if not keys:
        raise RuntimeError(f"router.api_keys_env names {config.api_keys_env}, which holds no keys")
    return keys


class OpenAIRouter:
    """Serve ingress replica; `handles` maps each model's name to its deployment handle."""

    def __init__(self, config: ClusterConfig, handles: dict[str, Any]) -> None:
        created = int(time.time())
        routes = [ModelRoute(name=m.name, aliases=m.aliases, handle=handles[m.name],
                             cold_start_timeout_s=m.autoscaling.cold_start_timeout_s,
                             max_model_len=m.engine.get("max_model_len"), created=created)
                  for m in config.models]
        self._app = create_api(ModelCatalog(routes), load_api_keys(config.router))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app
