"""OpenAI-style error bodies, shared by the router and the engine replicas."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    413: "BadRequestError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


def openai_error(status: int, message: str, *, param: str | None = None,
                 request_id: str | None = None) -> dict[str, Any]:
    """The body OpenAI's API (and its official client) uses for an error of HTTP status `status`."""
    error: dict[str, Any] = {
        "message": message,
        "type": _ERROR_TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "") + "Error"),
        "param": param,
        "code": status,
    }
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


class ApiError(Exception):
    """Raised anywhere on the router's request path; answered as an OpenAI error body with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
