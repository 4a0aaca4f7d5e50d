"""Prompt token estimates for every endpoint (and for bodies that make no sense), usage totals, reset durations."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.tenancy.ratelimit_headers import format_duration
from serve_app.tenancy.tokens import estimate_prompt_tokens, usage_tokens


@pytest.mark.parametrize(("endpoint", "body", "tokens"), [
    # 11 characters -> 3 tokens, plus 4 per message.
    ("chat", {"messages": [{"role": "user", "content": "hello world"}]}, 3 + 4),
    ("chat", {"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "efgh"}]}, 2 + 8),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"},
                                                        {"type": "image_url", "image_url": {"url": "x" * 999}}]}]},
     2 + 4),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "abcd"}]}, 1 + 4),
    ("completions", {"prompt": "abcdefghi"}, 3),
    ("completions", {"prompt": ["abcd", "efgh"]}, 2),
    ("completions", {"prompt": [1, 2, 3, 4, 5]}, 5),
    ("completions", {"prompt": [[1, 2], [3, 4, 5]]}, 5),
    ("embeddings", {"input": "abcdefgh"}, 2),
    ("embeddings", {"input": [[1, 2, 3]]}, 3),
    ("responses", {"input": "abcdefgh"}, 2),
    ("responses", {"input": "abcd", "instructions": "abcdefgh"}, 1 + 2),
    ("responses", {"input": [{"role": "user", "content": [{"type": "input_text", "text": "abcdefgh"}]}]}, 2 + 4),
])
def test_estimates(endpoint: str, body: dict[str, Any], tokens: int) -> None:
    assert estimate_prompt_tokens(endpoint, body) == tokens


NESTED: list[Any] = []
_inner = NESTED
for _ in range(5000):
    _inner.append([])
    _inner = _inner[0]


@pytest.mark.parametrize(("endpoint", "body"), [
    ("chat", {}),
    ("chat", {"messages": None}),
    ("chat", {"messages": "not a list"}),
    ("chat", {"messages": [None, 3, "text", {"content": None}, {"content": 5}, {"content": [None, 1, {"text": 2}]}]}),
    ("completions", {"prompt": None}),
    ("completions", {"prompt": {"a": 1}}),
    ("completions", {"prompt": [True, None, 1.5, {"x": "y"}]}),
    ("completions", {"prompt": NESTED}),
    ("embeddings", {"input": 3.5}),
    ("responses", {"input": [None, {"content": {"text": "x"}}], "instructions": 5}),
    ("audio/speech", {"input": "hi"}),
    ("", {"messages": [], "prompt": [], "input": []}),
    ("chat", []),  # type: ignore[arg-type]
    ("chat", None),  # type: ignore[arg-type]
    (None, {"prompt": "x"}),  # type: ignore[arg-type]
])
def test_odd_bodies_never_raise_and_count_at_least_one(endpoint: str, body: Any) -> None:
    assert estimate_prompt_tokens(endpoint, body) >= 1


@pytest.mark.parametrize(("usage", "total"), [
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, 15),
    ({"prompt_tokens": 10, "completion_tokens": 5}, 15),
    ({"prompt_tokens": 10}, 10),  # embeddings
    ({"input_tokens": 7, "output_tokens": 3}, 10),  # responses
    (None, None),
    ({}, None),
    ({"total_tokens": "many"}, None),
    ({"prompt_tokens": -1}, None),
    ({"total_tokens": True}, None),
])
def test_usage_totals(usage: Any, total: int | None) -> None:
    assert usage_tokens(usage) == total


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-3, "0s"), (0.0004, "0s"), (0.02, "20ms"), (0.9996, "1s"), (1, "1s"), (1.5, "1.5s"),
    (59.999, "59.999s"), (90.5, "1m30.5s"), (360, "6m0s"), (3600, "1h0m0s"), (3723.25, "1h2m3.25s"),
])
def test_reset_durations_in_openai_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
