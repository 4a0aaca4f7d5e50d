"""Input lines of a batch job: OpenAI batch request lines or plain prompts, normalised to one request shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# The OpenAI batch `url` of each endpoint the engine answers.
URLS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
REQUEST_FIELDS = ("custom_id", "method", "url", "body")
# A line without a custom_id is named after its line number, so a rerun names it the same way.
ASSIGNED_ID = "line-{}"


@dataclass(frozen=True)
class LineError:
    """Why a line is not a request; `code` is a short machine-readable reason."""

    code: str
    message: str


@dataclass(frozen=True)
class Request:
    """One input line: a request for `endpoint` ("chat" or "completions"), or the error that makes it none."""

    line: int
    custom_id: str
    endpoint: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    error: LineError | None = None


def parse_line(raw: bytes | str, line: int, model: str) -> Request:
    """The request on input line `line` (1-based), its body addressed to `model`."""
    try:
        data = _load(raw)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        reason = f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        return _invalid(line, ASSIGNED_ID.format(line), "invalid_json", f"line {line} is not valid JSON: {reason}")
    if not isinstance(data, dict):
        return _invalid(line, ASSIGNED_ID.format(line), "invalid_request",
                        f"line {line} must be a JSON object, not {type(data).__name__}")
    if data.keys() & set(REQUEST_FIELDS):
        return _batch_request(data, line, model)
    return _plain_request(data, line, model)


def custom_id_of(raw: bytes | str, line: int) -> str:
    """The id the line is answered under: its custom_id, else one assigned from the line number."""
    try:
        data = _load(raw)
    except ValueError:
        return ASSIGNED_ID.format(line)
    return _custom_id(data, line) if isinstance(data, dict) else ASSIGNED_ID.format(line)


def _load(raw: bytes | str) -> Any:
    # Decoded here rather than by json.loads, which would take a stray byte-order mark as UTF-16.
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def _custom_id(data: dict[str, Any], line: int) -> str:
    custom_id = data.get("custom_id")
    return custom_id if isinstance(custom_id, str) and custom_id else ASSIGNED_ID.format(line)


def _batch_request(data: dict[str, Any], line: int, model: str) -> Request:
    custom_id = _custom_id(data, line)
    unknown = sorted(data.keys() - set(REQUEST_FIELDS))
    if unknown:
        return _invalid(line, custom_id, "unknown_field",
                        f"unknown field(s) {', '.join(unknown)}; a request line has {', '.join(REQUEST_FIELDS)}")
    if "custom_id" in data and custom_id != data["custom_id"]:
        return _invalid(line, custom_id, "invalid_custom_id", "custom_id must be a non-empty string")
    if data.get("method", "POST") != "POST":
        return _invalid(line, custom_id, "invalid_method", f"method must be POST, not {data['method']!r}")
    url = data.get("url")
    if url not in URLS:
        return _invalid(line, custom_id, "invalid_url", f"url must be one of {', '.join(URLS)}, not {url!r}")
    body = data.get("body")
    if not isinstance(body, dict):
        return _invalid(line, custom_id, "invalid_body", "body must be a JSON object with the request parameters")
    return _request(line, custom_id, URLS[url], body, model)


def _plain_request(data: dict[str, Any], line: int, model: str) -> Request:
    custom_id = ASSIGNED_ID.format(line)
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt == has_messages:
        return _invalid(line, custom_id, "invalid_request",
                        "a line needs either `prompt` or `messages` (a plain request), "
                        f"or the batch request fields {', '.join(REQUEST_FIELDS)}")
    return _request(line, custom_id, "chat" if has_messages else "completions", data, model)


def _request(line: int, custom_id: str, endpoint: str, body: dict[str, Any], model: str) -> Request:
    # A batch answers with whole bodies; a streamed answer has no place in the output file.
    if body.get("stream"):
        return _invalid(line, custom_id, "invalid_body", "stream is not supported in a batch; remove it")
    # The job runs one model: the line's own `model` (or none) is replaced by it.
    return Request(line, custom_id, endpoint, {**body, "model": model})


def _invalid(line: int, custom_id: str, code: str, message: str) -> Request:
    return Request(line, custom_id, error=LineError(code, message))
