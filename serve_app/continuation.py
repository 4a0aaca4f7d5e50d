"""Continuing a broken stream on another replica: the request that picks up where the client's text stopped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Features whose output cannot be resumed from a text prefix: several choices, token-level extras, or
# constrained decoding whose state the prefix does not carry.
_NOT_CONTINUABLE = ("best_of", "logprobs", "top_logprobs", "echo", "suffix", "tools", "response_format",
                    "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                    "prompt_logprobs")


_CONTINUABLE_ENDPOINTS = ("chat", "completions")
# A Responses API stream ends with one of these events; its response holds the usage (input and output tokens).
RESPONSES_FINAL_EVENTS = tuple(f"event: response.{end}\n" for end in ("completed", "incomplete", "failed"))


@dataclass(frozen=True)
class Impossible:
    """Why a stream cannot be continued; the client gets this in an error event."""

    reason: str


@dataclass(frozen=True)
class SentSoFar:
    """What the client already has of a stream: its id, its text, and how many text chunks (about one token each)."""

    stream_id: str | None
    text: str
    chunks: int


def read_sent(endpoint: str, lines: list[str]) -> SentSoFar:
    """Parses the SSE lines already relayed; only done after a failure, so the healthy path parses nothing."""
    stream_id, pieces = None, []
    for line in lines:
        for event in line.split("\n\n"):
            payload = event.removeprefix("data: ").strip()
            if not payload.startswith("{"):
                continue
            chunk = json.loads(payload)
            stream_id = stream_id or chunk.get("id")
            piece = _text_of(endpoint, chunk)
            if piece:
                pieces.append(piece)
    return SentSoFar(stream_id, "".join(pieces), len(pieces))


def continuation_body(endpoint: str, body: dict[str, Any], sent: SentSoFar) -> dict[str, Any] | Impossible:
    """The body that asks another replica for the rest of the answer, or why there is none."""
    if endpoint not in _CONTINUABLE_ENDPOINTS:
        # A Responses API stream's events (output items, content parts, sequence numbers) are built by the
        # replica that generates: another replica cannot pick them up mid-way.
        return Impossible(f"{endpoint} streams cannot be continued on another replica")
    if (body.get("n") or 1) != 1:
        return Impossible("a stream of several choices (n > 1) cannot be continued on another replica")
    blocking = [name for name in _NOT_CONTINUABLE if body.get(name) not in (None, False, 0, [], {})]
    if blocking:
        return Impossible(f"a stream using {blocking[0]} cannot be continued on another replica")
    rest = _remaining_tokens(body, sent.chunks)
    if rest is None:
        return Impossible("the stream had already produced all its tokens")
    if endpoint == "completions":
        if not isinstance(body.get("prompt"), str):
            return Impossible("only a single text prompt can be continued on another replica")
        return {**body, "prompt": body["prompt"] + sent.text, **rest}
    if isinstance(body.get("messages"), list):
        messages = [*body["messages"], {"role": "assistant", "content": sent.text}]
        return {**body, "messages": messages, "add_generation_prompt": False, "continue_final_message": True,
                **rest}
    return Impossible("only a list of chat messages can be continued on another replica")


def is_last_event(line: str) -> bool:
    """Whether `line` completes a stream for its client: [DONE], or a Responses API stream's final event."""
    return "data: [DONE]" in line or line.startswith(RESPONSES_FINAL_EVENTS)


def stream_error_event(endpoint: str, error: dict[str, Any], events_sent: int) -> str:
    """The SSE event that ends a stream with `error` (an OpenAI error body) once its headers are gone.

    A Responses API stream ends with its `error` event (no [DONE]); the body's `error` object rides along, so
    the openai client raises it as it does a chat stream's error."""
    if endpoint == "responses":
        event = {"type": "error", "code": str(error["error"].get("code")), "message": error["error"]["message"],
                 "param": None, "sequence_number": events_sent, **error}
        return f"event: error\ndata: {json.dumps(event)}\n\n"
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n"


def _remaining_tokens(body: dict[str, Any], used: int) -> dict[str, int] | None:
    """The token bounds of the continuation: what is left of each one the client set; None when one ran out."""
    rest = {}
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if value - used <= 0:
                return None
            rest[name] = value - used
    least = body.get("min_tokens")
    if isinstance(least, int) and not isinstance(least, bool) and least > 0:
        rest["min_tokens"] = max(0, least - used)  # what the client already has counts towards its minimum
    return rest


def _text_of(endpoint: str, chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


class StreamSplice:
    """Makes a continuation's chunks read as the same stream: the first stream's id, and no second role chunk."""

    def __init__(self, original_id: str | None) -> None:
        self._original_id = original_id
        self._new_id: str | None = None

    def adapt(self, line: str) -> str | None:
        """The line to send on, or None to drop it."""
        if not line.startswith("data: {"):
            return line
        if self._new_id is None:
            self._new_id = json.loads(line.removeprefix("data: ")).get("id")
            if '"role":"assistant"' in line and '"content":""' in line:
                return None  # the client had its role chunk from the first replica
        if self._original_id and self._new_id:
            return line.replace(f'"id":"{self._new_id}"', f'"id":"{self._original_id}"', 1)
        return line
