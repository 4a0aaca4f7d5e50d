"""Batch input lines: OpenAI batch request lines and plain prompts become requests; anything else an error."""

from __future__ import annotations

import json

import pytest

from cluster.batch.requests import custom_id_of, parse_line


def line(data: object) -> str:
    return json.dumps(data)


def test_batch_request_line_keeps_its_custom_id_and_gets_the_job_model() -> None:
    request = parse_line(line({"custom_id": "a-1", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}}),
                         7, "smollm2")
    assert request.error is None
    assert (request.line, request.custom_id, request.endpoint) == (7, "a-1", "chat")
    assert request.body == {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}


def test_completions_url_and_omitted_method_and_model() -> None:
    request = parse_line(line({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x"}}), 1, "m")
    assert (request.endpoint, request.body) == ("completions", {"prompt": "x", "model": "m"})


@pytest.mark.parametrize(("data", "endpoint"), [
    ({"prompt": "The capital of France is", "max_tokens": 8}, "completions"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 0}, "chat"),
])
def test_plain_lines_get_an_id_from_their_line_number(data: dict, endpoint: str) -> None:
    request = parse_line(line(data), 12, "smollm2")
    assert request.error is None
    assert (request.custom_id, request.endpoint) == ("line-12", endpoint)
    assert request.body == {**data, "model": "smollm2"}


@pytest.mark.parametrize(("text", "code", "words"), [
    ("{not json", "invalid_json", "not valid JSON"),
    (b"\xff\xfe{}", "invalid_json", "not UTF-8"),
    ("[1, 2]", "invalid_request", "JSON object"),
    (line({"hello": "world"}), "invalid_request", "prompt"),
    (line({"prompt": "a", "messages": []}), "invalid_request", "either"),
    (line({"custom_id": "x", "url": "/v1/completions", "body": {}, "extra": 1}), "unknown_field", "extra"),
    (line({"custom_id": "x", "url": "/v1/embeddings", "body": {}}), "invalid_url", "/v1/embeddings"),
    (line({"custom_id": "x", "body": {}}), "invalid_url", "/v1/chat/completions"),
    (line({"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}), "invalid_method", "POST"),
    (line({"custom_id": "x", "url": "/v1/completions", "body": "prompt"}), "invalid_body", "JSON object"),
    (line({"custom_id": 5, "url": "/v1/completions", "body": {}}), "invalid_custom_id", "string"),
    (line({"prompt": "a", "stream": True}), "invalid_body", "stream"),
])
def test_bad_lines_are_errors_with_a_reason(text: str | bytes, code: str, words: str) -> None:
    request = parse_line(text, 3, "smollm2")
    assert request.error is not None and request.endpoint is None
    assert request.error.code == code
    assert words in request.error.message


def test_an_invalid_line_keeps_a_custom_id_it_has() -> None:
    request = parse_line(line({"custom_id": "keep-me", "url": "/v1/nope", "body": {}}), 4, "m")
    assert request.custom_id == "keep-me"


@pytest.mark.parametrize(("text", "expected"), [
    (line({"custom_id": "abc", "url": "/v1/completions", "body": {}}), "abc"),
    (line({"prompt": "x"}), "line-9"),
    ("{broken", "line-9"),
    (line({"custom_id": ""}), "line-9"),
    ("42", "line-9"),
])
def test_custom_id_of_matches_what_parsing_assigns(text: str, expected: str) -> None:
    assert custom_id_of(text, 9) == expected == parse_line(text, 9, "m").custom_id
