"""Per-model bounds on what one request may ask for, checked in the router before a replica sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.config import RequestLimitsConfig

# The fields that bound generation, per endpoint; the first is the one set when a cap applies and none is given.
TOKEN_FIELDS = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}


@dataclass(frozen=True)
class LimitViolation:
    """Why a body was refused: a 400 naming the field."""

    param: str
    message: str


def apply_limits(endpoint: str, body: dict[str, Any], limits: RequestLimitsConfig,
                 model: str) -> dict[str, Any] | LimitViolation:
    """The body to forward (a copy when a cap was applied), or why it is refused.

    Values of the wrong type are left alone: vLLM's own validation answers those with a 400 of its own."""
    violation = _count_violation(body, limits, model)
    if violation:
        return violation
    if limits.max_tokens is None or endpoint not in TOKEN_FIELDS:
        return body
    fields = TOKEN_FIELDS[endpoint]
    given = [name for name in fields if _is_int(body.get(name))]
    if not given:
        # Unset would mean "up to the context length": the cap is the most the model may generate.
        return {**body, fields[0]: limits.max_tokens}
    over = [name for name in given if body[name] > limits.max_tokens]
    if not over:
        return body
    if not limits.clamp_max_tokens:
        return LimitViolation(over[0], f"{over[0]} is {body[over[0]]}, above the limit of {limits.max_tokens} "
                                       f"tokens per request for model {model!r}")
    return {**body, **{name: limits.max_tokens for name in over}}


def _count_violation(body: dict[str, Any], limits: RequestLimitsConfig, model: str) -> LimitViolation | None:
    for name, bound in (("n", limits.max_n), ("best_of", limits.max_best_of)):
        value = body.get(name)
        if _is_int(value) and value > bound:
            return LimitViolation(name, f"{name} is {value}; model {model!r} allows at most {bound}")
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
