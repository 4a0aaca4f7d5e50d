"""Token counts for the quota limiter: the prompt estimated before admission, the real total read from usage."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

CHARS_PER_TOKEN = 4
# Chat templates wrap each message in role markers; OpenAI's own estimate counts about this many per message.
TOKENS_PER_MESSAGE = 4
# Prompts nest at most twice (a batch of token-id lists); deeper JSON is not a prompt, and is not walked.
MAX_PROMPT_DEPTH = 2


def estimate_prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """The prompt's size in tokens, guessed from characters (4 a token) or token ids; >= 1, never raises.

    `endpoint` is the router's name for it ("chat", "completions", "responses", "embeddings") or its path."""
    if not isinstance(body, dict):
        return 1
    name = endpoint.strip("/").removeprefix("v1/") if isinstance(endpoint, str) else ""
    reader = _READERS.get(name, _any_field)
    return max(1, reader(body))


def usage_tokens(usage: Any) -> int | None:
    """Prompt plus completion tokens of an OpenAI `usage` object (chat, completions or responses); None if absent."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if _is_count(total):
        return total
    for prompt, completion in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
        if _is_count(usage.get(prompt)):
            completed = usage.get(completion)
            return usage[prompt] + (completed if _is_count(completed) else 0)
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chat(body: dict[str, Any]) -> int:
    return _messages(body.get("messages"))


def _completions(body: dict[str, Any]) -> int:
    return _prompt(body.get("prompt"))


def _responses(body: dict[str, Any]) -> int:
    instructions = body.get("instructions")
    extra = _chars_to_tokens(len(instructions)) if isinstance(instructions, str) else 0
    value = body.get("input")
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return extra + _messages(value)
    return extra + _prompt(value)


def _embeddings(body: dict[str, Any]) -> int:
    return _prompt(body.get("input"))


def _any_field(body: dict[str, Any]) -> int:
    return _chat(body) + _completions(body) + _embeddings(body)


_READERS: Mapping[str, Callable[[dict[str, Any]], int]] = MappingProxyType({
    "chat": _chat, "chat/completions": _chat, "completions": _completions,
    "responses": _responses, "embeddings": _embeddings,
})


def _messages(messages: Any) -> int:
    """Chat messages (or Responses input items): their text, plus the template's markers for each."""
    if not isinstance(messages, list):
        return 0
    chars = sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    chars += sum(len(m) for m in messages if isinstance(m, str))
    return _chars_to_tokens(chars) + TOKENS_PER_MESSAGE * len(messages)


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_part_chars(part) for part in content)
    return 0


def _part_chars(part: Any) -> int:
    # Text parts are {"type": "text" | "input_text" | ..., "text": "..."}; images and audio are not counted.
    if isinstance(part, str):
        return len(part)
    text = part.get("text") if isinstance(part, dict) else None
    return len(text) if isinstance(text, str) else 0


def _prompt(value: Any) -> int:
    """A completions prompt or an embeddings input: text, token ids, or a batch of either."""
    chars, ids = _prompt_parts(value, 0)
    return _chars_to_tokens(chars) + ids


def _prompt_parts(value: Any, depth: int) -> tuple[int, int]:
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, int) and not isinstance(value, bool):
        return 0, 1
    if not isinstance(value, list) or depth >= MAX_PROMPT_DEPTH:
        return 0, 0
    chars = ids = 0
    for item in value:
        item_chars, item_ids = _prompt_parts(item, depth + 1)
        chars, ids = chars + item_chars, ids + item_ids
    return chars, ids


def _chars_to_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)
