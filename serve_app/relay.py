"""Relaying one admitted request to its model's deployment and the reply back, failing over to another replica."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from serve_app.admission import COLD_RETRY_AFTER_S, QueueTicket
from serve_app.continuation import (Impossible, StreamSplice, continuation_body, is_last_event, read_sent,
                                    stream_error_event)
from serve_app.errors import ApiError, openai_error
from serve_app.llm_server import Accepted, ReplyEnd, ReplyHead
from serve_app.metrics import RequestObservation

logger = logging.getLogger(__name__)

# Called once when the reply is over, however it ended, with the tokens it used (None when unknown).
OnEnd = Callable[[int | None], None]
UNAVAILABLE_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Call:
    """One request as the relay sends it, and how far it may go to get an answer."""

    route: Any  # the model's ModelRoute
    endpoint: str
    body: dict[str, Any]
    request_id: str
    max_attempts: int
    deadline: float  # time.monotonic() past which no new attempt starts
    observation: RequestObservation  # the request's metrics: chunks, retries, failovers, how it ended

    def attempt_id(self, attempt: int) -> str:
        # Each attempt is a new engine request; the suffix keeps engine ids unique and shows the retry in logs.
        return self.request_id if attempt == 0 else f"{self.request_id}-retry{attempt}"


class ReplicaLost(Exception):
    """A replica failed before it answered: it died, its engine failed, or it was draining."""


async def relay(call: Call, ticket: QueueTicket, headers: dict[str, str], on_end: OnEnd) -> Response:
    """A JSON response, or a stream that ends `ticket` and calls `on_end` when it ends."""
    try:
        replies, head, attempts = await open_reply(call, ticket, first_attempt=0)
    except BaseException as exc:
        ticket.close()
        on_end(None)
        call.observation.finished(_failure_status(exc))
        raise
    if head.streaming:
        return RelayedStream(call, replies, attempts, headers, ticket, on_end)
    ticket.close()
    on_end(_total_tokens(head.body))
    call.observation.finished(head.status, *_usage(head.body))
    if head.status >= 400 and isinstance(head.body, dict) and isinstance(head.body.get("error"), dict):
        head.body["error"].setdefault("request_id", call.request_id)
    return JSONResponse(head.body, status_code=head.status, headers=headers)


async def open_reply(call: Call, ticket: QueueTicket, first_attempt: int) -> tuple[Any, ReplyHead, int]:
    """The replies and head of the first attempt that answers; 503 when none does. Also the attempts used.

    An engine's 4xx is an answer (the request is at fault, another replica would say the same); a failure
    or a 5xx before the first byte is tried again on another replica while attempts and time remain."""
    attempt = first_attempt
    while True:
        replies = call.route.handle.options(stream=True).generate.remote(
            call.endpoint, call.body, call.attempt_id(attempt))
        attempt += 1
        try:
            head = await _first_items(call.route, replies, ticket)
            if head.status < 500 or not _may_retry(call, attempt):
                return replies, head, attempt
            reason: object = f"engine answered {head.status}"
        except ReplicaLost as exc:
            if not _may_retry(call, attempt):
                replies.cancel()
                raise ApiError(503, f"model {call.route.name!r} is unavailable; retry shortly",
                               headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}) from None
            reason = exc.__cause__ or exc
        except BaseException:
            replies.cancel()
            raise
        replies.cancel()
        call.observation.retried()
        logger.warning("request %s: a replica of %s failed before answering (%s); trying another (%d of %d)",
                       call.request_id, call.route.name, reason, attempt + 1, call.max_attempts)


def _may_retry(call: Call, attempts_made: int) -> bool:
    return attempts_made < call.max_attempts and time.monotonic() < call.deadline


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
    except Exception as exc:
        raise ReplicaLost(str(exc)) from exc
    if route.max_model_len is None:
        route.max_model_len = accepted.max_model_len
    return head


def _failure_status(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    return 499 if isinstance(exc, asyncio.CancelledError) else 500  # 499: the client went away first


def _usage(body: Any) -> tuple[int | None, int | None]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None, None
    if "input_tokens" in usage:  # the Responses API's names
        return usage.get("input_tokens"), usage.get("output_tokens")
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _total_tokens(body: Any) -> int | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) else None


class RelayedStream(StreamingResponse):
    """The SSE lines of a replica, passed through; when the replica fails mid-stream, the rest comes from
    another one, as one stream with one id. Ends the request's bookkeeping however the stream ends: in
    `__call__`'s `finally`, which also covers a client gone before Starlette started the generator."""

    def __init__(self, call: Call, replies: Any, attempts: int, headers: dict[str, str], ticket: QueueTicket,
                 on_end: OnEnd) -> None:
        self._call, self._replies, self._attempts = call, replies, attempts
        self._ticket, self._on_end = ticket, on_end
        self._end = ReplyEnd()
        self._tokens: int | None = None
        self._status = 499  # until the stream ends, on its own (200) or with an error event (503)
        super().__init__(self._lines(), media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client that hangs up cancels the response: pass that on so the engine aborts the request.
            self._replies.cancel()
            self._ticket.close()
            self._on_end(self._tokens)
            self._call.observation.finished(self._status, self._end.prompt_tokens, self._end.completion_tokens)

    async def _lines(self) -> AsyncIterator[str]:
        sent: list[str] = []  # kept as they are: parsed only if the stream has to be continued
        splice: StreamSplice | None = None
        observation = self._call.observation
        while True:
            try:
                async for item in self._replies:
                    if type(item) is str:
                        line = splice.adapt(item) if splice else item
                        if line is not None:
                            sent.append(line)
                            observation.token()
                            if is_last_event(line):
                                self._status = 200  # complete for the client, which may hang up on it
                            yield line
                    elif isinstance(item, ReplyEnd):
                        self._end, self._tokens = item, item.total_tokens
                self._status = 200
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("stream %s from model %s broke: %s", self._call.request_id, self._call.route.name, exc)
                if sent and is_last_event(sent[-1]):
                    self._status = 200
                    return  # everything was sent; only the usage report was lost
                self._replies.cancel()
                splice, failure = await self._continue(sent)
                if failure:
                    self._status = 503
                    yield failure
                    return

    async def _continue(self, sent: list[str]) -> tuple[StreamSplice | None, str | None]:
        """Points the stream at another replica's continuation; or the error event that ends the stream."""
        call = self._call
        progress = read_sent(call.endpoint, sent)
        body = continuation_body(call.endpoint, call.body, progress)
        if isinstance(body, Impossible) or not _may_retry(call, self._attempts):
            reason = body.reason if isinstance(body, Impossible) else "no attempts left"
            return None, self._error_event(f"model {call.route.name!r} failed mid-stream ({reason}); retry", sent)
        try:
            self._replies, head, self._attempts = await open_reply(replace(call, body=body), self._ticket,
                                                                   first_attempt=self._attempts)
        except ApiError as exc:
            return None, self._error_event(exc.message, sent)
        if not head.streaming:
            return None, self._error_event(f"model {call.route.name!r} could not continue the stream: "
                                           f"{json.dumps(head.body)[:300]}", sent)
        call.observation.failed_over()
        logger.warning("stream %s of model %s continues on another replica after %d chunks",
                       call.request_id, call.route.name, progress.chunks)
        return StreamSplice(progress.stream_id), None

    def _error_event(self, message: str, sent: list[str]) -> str:
        # Headers are gone already: the error travels as a final SSE event, so no stream ends silently.
        error = openai_error(503, message, request_id=self._call.request_id)
        return stream_error_event(self._call.endpoint, error, events_sent=len(sent))
