"""Per-model request limits as a pure check: caps on max_tokens (reject or clamp), n and best_of."""

from __future__ import annotations

import pytest

from serve_app.config import RequestLimitsConfig
from serve_app.request_limits import LimitViolation, apply_limits

CAPPED = RequestLimitsConfig(max_tokens=100)
CLAMPED = RequestLimitsConfig(max_tokens=100, clamp_max_tokens=True)


def test_no_cap_leaves_the_body_alone() -> None:
    body = {"model": "m", "max_tokens": 10**6}
    assert apply_limits("chat", body, RequestLimitsConfig(), "m") is body


@pytest.mark.parametrize("endpoint,field", [("chat", "max_tokens"), ("chat", "max_completion_tokens"),
                                            ("completions", "max_tokens")])
def test_over_the_cap_is_refused_naming_the_field(endpoint: str, field: str) -> None:
    result = apply_limits(endpoint, {"model": "m", field: 101}, CAPPED, "m")
    assert isinstance(result, LimitViolation) and result.param == field
    assert "101" in result.message and "100" in result.message


def test_at_the_cap_passes_unchanged() -> None:
    body = {"model": "m", "max_tokens": 100}
    assert apply_limits("completions", body, CAPPED, "m") is body


def test_clamp_lowers_every_field_over_the_cap_without_touching_the_original() -> None:
    body = {"model": "m", "max_tokens": 500, "max_completion_tokens": 50}
    result = apply_limits("chat", body, CLAMPED, "m")
    assert result == {"model": "m", "max_tokens": 100, "max_completion_tokens": 50}
    assert body["max_tokens"] == 500


@pytest.mark.parametrize("endpoint,field", [("chat", "max_completion_tokens"), ("completions", "max_tokens")])
def test_a_cap_fills_in_an_absent_max_tokens(endpoint: str, field: str) -> None:
    assert apply_limits(endpoint, {"model": "m"}, CAPPED, "m") == {"model": "m", field: 100}


@pytest.mark.parametrize("value", ["many", -5, None, 1.5e9, True])
def test_wrong_types_are_left_to_the_engine(value: object) -> None:
    # vLLM's validation answers these with its own 400; a bool is not a count even though it is an int.
    body = {"model": "m", "max_tokens": value, "n": value}
    result = apply_limits("completions", body, CAPPED, "m")
    assert not isinstance(result, LimitViolation)


@pytest.mark.parametrize("field,limit", [("n", "max_n"), ("best_of", "max_best_of")])
def test_n_and_best_of_bounds(field: str, limit: str) -> None:
    limits = RequestLimitsConfig(**{limit: 4})
    assert not isinstance(apply_limits("completions", {field: 4}, limits, "m"), LimitViolation)
    refused = apply_limits("completions", {field: 5}, limits, "m")
    assert isinstance(refused, LimitViolation) and refused.param == field
