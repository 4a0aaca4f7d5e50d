"""The 400 answers for request bodies the engine's OpenAI layer cannot take: refused by its models, or unsendable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from serve_app.errors import openai_error

# vLLM hands each request to its engine core as msgpack, which carries no integer outside int64/uint64: a larger
# one in a field vLLM leaves unbounded (stream_interval, for one) fails there, once the reply has begun, as a 500.
_MSGPACK_INTS = range(-(2**63), 2**64)


def invalid_request_body(exc: Exception) -> dict[str, Any]:
    """The 400 body for a request vLLM's models refuse.

    Some of vLLM's "before" validators read a field before its type is checked (`structured_outputs: 5` raises
    AttributeError in check_structured_outputs_count), and pydantic lets such errors through as they are:
    raised while parsing the body, they are still the client's fault, never a 500."""
    if isinstance(exc, ValidationError):
        return openai_error(400, _validation_message(exc), param=_validation_param(exc))
    return openai_error(400, f"invalid request: {exc}")


def field_with_huge_int(body: dict[str, Any], fields: Iterable[str]) -> str | None:
    """The first of vLLM's request fields in `body` that holds an integer msgpack cannot carry, if any."""
    for name in fields:
        pending = [body.get(name)]
        while pending:  # a loop, not recursion: a field typed dict[str, Any] may nest deeply
            value = pending.pop()
            if isinstance(value, dict):
                pending.extend(value.values())
            elif isinstance(value, list):
                pending.extend(value)
            elif isinstance(value, int) and value not in _MSGPACK_INTS:
                return name
    return None


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(problems)


def _validation_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return ".".join(str(part) for part in errors[0]["loc"]) if errors else None
