"""Reading a request body the way a public endpoint must: bounded in size and in time, JSON object or 400."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from serve_app.errors import ApiError


async def read_json_object(request: Request, max_bytes: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object; 413 past `max_bytes`, 408 when it trickles in slower than `timeout_s`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw = await asyncio.wait_for(_read(request, max_bytes), timeout_s)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g}s") from None
    try:
        body = json.loads(raw)
    except ValueError as exc:  # bad JSON, bad UTF-8, or an integer past Python's 4300-digit limit
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


async def _read(request: Request, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # a lying or absent Content-Length is caught here, before memory grows
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {max_bytes} bytes (router.max_body_bytes)")
