"""Request ids outside Serve: what Serve's HTTP proxy does for every request, for the router run on its own."""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.log_setup import bind_request_id, unbind_request_id

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Keeps the client's X-Request-Id or makes one, returns it on the response, and puts it in log lines.

    Serve's proxy does exactly this before the router sees a request (and appends the header to every
    response), so the router under Serve goes without it: both would send the header twice."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        request_id = headers.get(REQUEST_ID_HEADER) or new_request_id()
        headers[REQUEST_ID_HEADER] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = bind_request_id(request_id)
        try:
            await self._app(scope, receive, send_with_id)
        finally:
            unbind_request_id(token)
