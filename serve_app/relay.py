"""Relaying one admitted request to its model's deployment and the reply back to the client."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from serve_app.admission import COLD_RETRY_AFTER_S, QueueTicket
from serve_app.errors import ApiError, openai_error
from serve_app.llm_server import Accepted, ReplyEnd, ReplyHead

logger = logging.getLogger(__name__)

# Called once when the reply is over, however it ended, with the tokens it used (None when unknown).
OnEnd = Callable[[int | None], None]


async def relay(route: Any, endpoint: str, body: dict[str, Any], request_id: str, ticket: QueueTicket,
                headers: dict[str, str], on_end: OnEnd) -> Response:
    """Send `body` to `route`'s deployment; a JSON response, or a stream that ends `ticket` when it ends."""
    replies = route.handle.options(stream=True).generate.remote(endpoint, body, request_id)
    try:
        head = await _first_items(route, replies, ticket)
    except BaseException:
        replies.cancel()
        ticket.close()
        on_end(None)
        raise
    if head.streaming:
        return RelayedStream(replies, route.name, request_id, headers, ticket, on_end)
    ticket.close()
    on_end(_total_tokens(head.body))
    if head.status >= 400 and isinstance(head.body, dict) and isinstance(head.body.get("error"), dict):
        head.body["error"].setdefault("request_id", request_id)
    return JSONResponse(head.body, status_code=head.status, headers=headers)


async def _first_items(route: Any, replies: Any, ticket: QueueTicket) -> ReplyHead:
    try:
        # The first item only says a replica took the request, so this bounds the wait for a cold model.
        accepted: Accepted = await asyncio.wait_for(anext(replies), timeout=route.cold_start_timeout_s)
        ticket.taken()
        head: ReplyHead = await anext(replies)
    except TimeoutError:
        raise ApiError(503, f"model {route.name!r} is starting; retry shortly",
                       headers={"Retry-After": str(COLD_RETRY_AFTER_S)}) from None
    except (asyncio.CancelledError, ApiError):
        raise
    except Exception:
        logger.exception("request to model %s failed", route.name)
        raise ApiError(503, f"model {route.name!r} is unavailable; retry shortly",
                       headers={"Retry-After": "5"}) from None
    if route.max_model_len is None:
        route.max_model_len = accepted.max_model_len
    return head


def _total_tokens(body: Any) -> int | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) else None


class RelayedStream(StreamingResponse):
    """The SSE lines of a replica, passed through; ends the request's bookkeeping however the stream ends.

    Ending it in `__call__`'s `finally` (not in the generator) also covers a client gone before the first byte,
    when Starlette never starts the generator."""

    def __init__(self, replies: Any, model: str, request_id: str, headers: dict[str, str], ticket: QueueTicket,
                 on_end: OnEnd) -> None:
        self._replies, self._model, self._request_id = replies, model, request_id
        self._ticket, self._on_end = ticket, on_end
        self._tokens: int | None = None
        super().__init__(self._lines(), media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client that hangs up cancels the response: pass that on so the engine aborts the request.
            self._replies.cancel()
            self._ticket.close()
            self._on_end(self._tokens)

    async def _lines(self) -> AsyncIterator[str]:
        try:
            async for item in self._replies:
                if type(item) is str:
                    yield item
                elif isinstance(item, ReplyEnd):
                    self._tokens = item.total_tokens
        except asyncio.CancelledError:
            raise
        except Exception:
            # Headers are gone already: the error travels as a final SSE event, so no stream ends silently.
            logger.exception("stream %s from model %s broke", self._request_id, self._model)
            error = openai_error(503, f"model {self._model!r} failed mid-stream; retry", request_id=self._request_id)
            yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n"
