"""Hostile request bodies for the OpenAI endpoints and the checks every reply to one must pass."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# Bounds that keep a fuzzed request cheap on a CPU engine without changing whether it is valid.
MAX_TOKENS_CAP, N_CAP = 4, 2
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
HUGE_INTS = (2**31, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 10**400)
DEEP = "__deep__"  # replaced by a deeply nested array once serialised: json.dumps itself cannot nest that deep


@dataclass(frozen=True)
class HostileRequest:
    """One POST as bytes on the wire, and the statuses that count as right where they are known: `expect`
    from any server, `engine_expect` only from a real engine (a fake one takes what the router lets by)."""

    path: str
    content: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    expect: tuple[int, ...] | None = None
    engine_expect: tuple[int, ...] | None = None

    def send(self, client: httpx.Client) -> httpx.Response:
        return client.post(self.path, content=self.content, headers=self.headers)


def bound_cost(body: Any, model: str | None, stream: bool | None) -> Any:
    """The body with `model` and `stream` set (unless fuzzed to a wrong type) and generation lengths capped.

    Wrong types and negative values pass untouched: they must come back as 400s. A missing or null token
    limit becomes the cap, or the engine would write up to the context length."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if model is not None and (body.get("model") is None or isinstance(body["model"], str)):
        body["model"] = model
    if stream is not None and (body.get("stream") is None or isinstance(body["stream"], bool)):
        body["stream"] = stream
    caps = {**dict.fromkeys(TOKEN_FIELDS, MAX_TOKENS_CAP), "n": N_CAP, "best_of": N_CAP}
    for name, cap in caps.items():
        if _over(body.get(name), cap):
            body[name] = type(body[name])(cap)  # same type: "4096" becomes "4", which pydantic still reads as 4
    if all(body.get(name) is None for name in TOKEN_FIELDS):
        body["max_tokens"] = MAX_TOKENS_CAP
    return body


def _over(value: Any, cap: int) -> bool:
    """Whether a count asks for more than `cap`; pydantic's lax mode reads numeric strings as numbers too."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, int | float) and not isinstance(value, bool) and value > cap


def encode(body: Any, depth: int = 0) -> bytes:
    """JSON as a client may send it: NaN and Infinity as bare tokens, lone surrogates as escapes."""
    text = json.dumps(body)  # allow_nan and ensure_ascii are on by default: both are what we want on the wire
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth).encode()


odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS), st.floats(), st.text(max_size=12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.just(DEEP))
token_ids = st.one_of(st.integers(-3, 50_000), st.sampled_from(HUGE_INTS))
Wrap = Callable[[st.SearchStrategy], st.SearchStrategy]


def _hostile(plausible: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(plausible, odd_values)


def _tame(plausible: st.SearchStrategy) -> st.SearchStrategy:
    return plausible


def _sampling_fields(wrap: Wrap) -> dict[str, st.SearchStrategy]:
    """Fields both endpoints take; `wrap` mixes wrong types into every value (or leaves them plausible)."""
    def floats(low: float, high: float) -> st.SearchStrategy:
        return wrap(st.floats(low, high))

    return {
        "temperature": floats(-1, 3), "top_p": floats(-0.5, 1.5), "top_k": wrap(st.integers(-2, 99)),
        "min_p": floats(-0.5, 1.5), "presence_penalty": floats(-3, 3), "frequency_penalty": floats(-3, 3),
        "repetition_penalty": floats(-1, 3), "max_tokens": wrap(st.integers(-2, MAX_TOKENS_CAP)),
        "min_tokens": wrap(st.integers(-1, 8)), "n": wrap(st.integers(-1, N_CAP)),
        "seed": wrap(st.one_of(st.integers(), st.sampled_from(HUGE_INTS))), "stream": wrap(st.booleans()),
        "stream_options": wrap(st.fixed_dictionaries({}, optional={"include_usage": wrap(st.booleans()),
                                                                   "continuous_usage_stats": wrap(st.booleans())})),
        "stop": wrap(st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=5))),
        "stop_token_ids": wrap(st.lists(token_ids, max_size=3)),
        "logit_bias": wrap(st.dictionaries(st.one_of(token_ids.map(str), st.text(max_size=4)),
                                           wrap(st.floats(-100, 100)), max_size=3)),
        "response_format": wrap(st.fixed_dictionaries(
            {"type": wrap(st.sampled_from(["text", "json_object", "json_schema", "xml"]))},
            optional={"json_schema": wrap(st.fixed_dictionaries({"name": st.text(max_size=6), "schema": wrap(
                st.fixed_dictionaries({"type": st.sampled_from(["object", "string", "integer", "bogus"])}))}))})),
        "structured_outputs": wrap(st.fixed_dictionaries({}, optional={
            "regex": st.text(max_size=8), "choice": st.lists(st.text(max_size=4), max_size=3),
            "json": wrap(st.just({"type": "integer"})), "grammar": st.text(max_size=12)})),
        "ignore_eos": wrap(st.booleans()), "use_beam_search": wrap(st.booleans()), "echo": wrap(st.booleans()),
        "prompt_logprobs": wrap(st.integers(-2, 30)), "truncate_prompt_tokens": wrap(st.integers(-2, 5000)),
        "allowed_token_ids": wrap(st.lists(token_ids, max_size=3)), "priority": wrap(st.integers(-5, 5)),
        "user": wrap(st.text(max_size=8)), "request_id": wrap(st.text(max_size=8)),
        "vllm_xargs": wrap(st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)),
    }


def _chat_fields(wrap: Wrap) -> dict[str, st.SearchStrategy]:
    tool = st.fixed_dictionaries({"type": wrap(st.just("function")), "function": wrap(st.fixed_dictionaries(
        {"name": wrap(st.text(max_size=8))},
        optional={"parameters": wrap(st.fixed_dictionaries({"type": st.sampled_from(["object", "nope"])}))}))})
    return {
        "logprobs": wrap(st.booleans()), "top_logprobs": wrap(st.integers(-1, 30)),
        "max_completion_tokens": wrap(st.integers(-2, MAX_TOKENS_CAP)), "tools": wrap(st.lists(tool, max_size=2)),
        "tool_choice": wrap(st.sampled_from(["auto", "none", "required"])),
        "add_generation_prompt": wrap(st.booleans()), "continue_final_message": wrap(st.booleans()),
        "chat_template": wrap(st.sampled_from(["{{ messages }}", "{% for %}"])),
        "chat_template_kwargs": wrap(st.dictionaries(st.text(max_size=4), st.booleans(), max_size=2)),
        "documents": wrap(st.lists(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), max_size=2)),
    }


def _completion_fields(wrap: Wrap) -> dict[str, st.SearchStrategy]:
    return {"logprobs": wrap(st.integers(-1, 30)), "best_of": wrap(st.integers(-1, N_CAP)),
            "suffix": wrap(st.text(max_size=6)), "prompt_embeds": wrap(st.sampled_from(["AAAA", "not base64", ""]))}


def _messages(wrap: Wrap) -> st.SearchStrategy:
    """Chat messages with odd roles and content of every shape vLLM parses (text, parts, media it must refuse)."""
    tame = wrap is _tame
    part = st.fixed_dictionaries(
        {"type": wrap(st.sampled_from(["text"] if tame else ["text", "image_url", "input_audio", "refusal", "bogus"]))},
        optional={"text": wrap(st.text(max_size=20)), "image_url": wrap(st.fixed_dictionaries({"url": st.sampled_from(
            ["data:image/png;base64,AAAA", "http://127.0.0.1:9/x.png", "file:///etc/passwd", ""])}))})
    roles = ["user", "system", "assistant"] + ([] if tame else ["tool", "developer", "function", "", "USER", "robot"])
    message = wrap(st.fixed_dictionaries(
        {"role": wrap(st.sampled_from(roles)),
         "content": wrap(st.one_of(st.text(max_size=40), st.lists(part, max_size=3)))},
        optional={} if tame else {"name": wrap(st.text(max_size=6)), "tool_call_id": wrap(st.text(max_size=6)),
                                  "tool_calls": wrap(st.lists(st.dictionaries(
                                      st.sampled_from(["id", "type", "function"]), st.text(max_size=4)), max_size=2))}))
    return wrap(st.lists(message, min_size=1 if tame else 0, max_size=3))


def _prompt(wrap: Wrap) -> st.SearchStrategy:
    if wrap is _tame:  # token ids the demo model's vocabulary holds
        return st.one_of(st.text(min_size=1, max_size=60), st.lists(st.integers(0, 1000), min_size=1, max_size=12))
    return wrap(st.one_of(
        st.text(max_size=60), st.lists(token_ids, max_size=12), st.lists(st.text(max_size=12), max_size=3),
        st.lists(st.lists(token_ids, max_size=4), max_size=3), st.lists(st.lists(st.lists(st.integers(0, 9))))))


def _shape(endpoint: str, wrap: Wrap) -> tuple[dict[str, st.SearchStrategy], dict[str, st.SearchStrategy]]:
    """An endpoint's required and optional fields."""
    if endpoint == CHAT:
        return {"messages": _messages(wrap)}, {**_sampling_fields(wrap), **_chat_fields(wrap)}
    return {"prompt": _prompt(wrap)}, {**_sampling_fields(wrap), **_completion_fields(wrap)}


# Hostile bodies carry wrong types all over; tame ones only odd but well-typed values, so that enough of them
# get past validation to reach the engine.
BODY_SHAPES = {(endpoint, wrap): _shape(endpoint, wrap)
               for endpoint in (CHAT, COMPLETIONS) for wrap in (_hostile, _tame)}


@st.composite
def hostile_bodies(draw: st.DrawFn, model: str) -> HostileRequest:
    """A JSON object with the real field names of chat or completions and wrong or extreme values in them."""
    endpoint, wrap = draw(st.sampled_from([CHAT, COMPLETIONS])), draw(st.sampled_from([_hostile, _tame]))
    required, optional = BODY_SHAPES[endpoint, wrap]
    if wrap is _tame:  # a few fields at a time, or some one of them is nearly always out of range
        names = draw(st.lists(st.sampled_from(sorted(optional)), max_size=3, unique=True))
        optional = {name: optional[name] for name in names}
    body = draw(st.fixed_dictionaries(required, optional=optional))
    if draw(st.integers(0, 4)) == 4:  # about one in ten names no served model: a string gets 404, anything else 400
        body["model"] = draw(odd_values.filter(lambda value: value not in (model, DEEP)))
        expect = (404,) if isinstance(body["model"], str) else (400,)
    else:
        body["model"], expect = model, None
    # 512 levels get past the router's JSON parser, 10 000 do not: then it answers 400 before the model lookup.
    depth = draw(st.sampled_from([1, 64, 512, 10_000]))
    content = encode(bound_cost(body, None, draw(st.booleans())), depth)
    if depth > 512 and b"[" * depth in content:
        expect = None
    return HostileRequest(endpoint, content, expect=expect)


def raw_noise(model: str) -> dict[str, HostileRequest]:
    """Bytes no well-behaved client sends, by name; each must get a 4xx, or a 2xx where the bytes still parse."""
    ok = json.dumps({"model": model, "prompt": "Hi", "max_tokens": MAX_TOKENS_CAP}).encode()
    # An unfinished object that already names the model and caps the length: cases append their own tail.
    head = f'{{"model": "{model}", "max_tokens": {MAX_TOKENS_CAP}, '.encode()
    return {**_malformed(ok, head), **_extreme_values(model, head), **_wrong_headers(model, ok)}


def _malformed(ok: bytes, head: bytes) -> dict[str, HostileRequest]:
    def bad(path: str, content: bytes) -> HostileRequest:
        return HostileRequest(path, content, expect=(400,))

    return {
        "empty": bad(COMPLETIONS, b""),
        "truncated": bad(CHAT, head + b'"messages": [{"role": "user", "content": "hi"'),
        "truncated_escape": bad(COMPLETIONS, head + b'"prompt": "\\u12'),
        "not_json": bad(COMPLETIONS, b"hello there"),
        "invalid_utf8_string": bad(COMPLETIONS, head + b'"prompt": "\xff\xfe\xc3\x28"}'),
        "invalid_utf8_only": bad(CHAT, b"\xff\xfe\xfd\x00\x80"),
        "nul_bytes": bad(CHAT, b"\x00" * 64),
        "json_array": bad(COMPLETIONS, b"[" + ok + b"]"),
        "json_string": bad(CHAT, b'"chat"'),
        "json_null": bad(CHAT, b"null"),
        "deep_array": bad(COMPLETIONS, head + b'"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        "deep_object": bad(CHAT, head + b'"messages": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_001),
        "five_thousand_digit_int": bad(COMPLETIONS, head + b'"prompt": "Hi", "seed": 1' + b"0" * 5000 + b"}"),
        "utf8_bom": HostileRequest(COMPLETIONS, b"\xef\xbb\xbf" + ok),
        "utf16": HostileRequest(COMPLETIONS, ok.decode().encode("utf-16")),
        "duplicate_keys": HostileRequest(COMPLETIONS, b'{"model": "nope", ' + ok[1:]),
    }


def _extreme_values(model: str, head: bytes) -> dict[str, HostileRequest]:
    chat = head + b'"messages": [{"role": "user", "content": "Hi"}], '
    completion = head + b'"prompt": "Hi", '
    return {
        "nan_temperature": HostileRequest(COMPLETIONS, completion + b'"temperature": NaN}'),
        "inf_top_p": HostileRequest(COMPLETIONS, completion + b'"top_p": Infinity}'),
        "minus_inf_penalty": HostileRequest(CHAT, chat + b'"presence_penalty": -Infinity}'),
        "float_overflow_max_tokens": HostileRequest(
            COMPLETIONS, f'{{"model": "{model}", "prompt": "Hi", "max_tokens": 1e999}}'.encode(), engine_expect=(400,)),
        "huge_seed": HostileRequest(COMPLETIONS, completion + f'"seed": {10**30}}}'.encode(), engine_expect=(400,)),
        "huge_logit_bias_key": HostileRequest(CHAT, chat + b'"logit_bias": {"99999999999999999999": 5}}'),
        "huge_token_id": HostileRequest(COMPLETIONS, head + f'"prompt": [1, {2**63}]}}'.encode(), engine_expect=(400,)),
        "lone_surrogate_prompt": HostileRequest(COMPLETIONS, head + b'"prompt": "a\\ud800b"}'),
        "lone_surrogate_message": HostileRequest(CHAT, head + b'"messages": [{"role": "user", "content": "\\udfff"}]}'),
        "control_chars_model": HostileRequest(CHAT, b'{"model": "\\u0000\\n\\u001b[31m", "messages": []}',
                                              expect=(404,)),
        "long_prompt": HostileRequest(COMPLETIONS, head + b'"prompt": "' + b"word " * 40_000 + b'"}',
                                      engine_expect=(400,)),
        "two_megabyte_field": HostileRequest(COMPLETIONS, completion + b'"user": "' + b"u" * 2**21 + b'"}'),
    }


def _wrong_headers(model: str, ok: bytes) -> dict[str, HostileRequest]:
    form = "multipart/form-data; boundary=b"
    return {
        "text_plain": HostileRequest(COMPLETIONS, ok, headers={"content-type": "text/plain"}),
        "no_content_type": HostileRequest(COMPLETIONS, ok, headers={}),
        "form_urlencoded": HostileRequest(COMPLETIONS, f"model={model}&prompt=Hi".encode(), expect=(400,),
                                          headers={"content-type": "application/x-www-form-urlencoded"}),
        "multipart": HostileRequest(COMPLETIONS, b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
                                    + model.encode() + b"\r\n--b--\r\n", headers={"content-type": form},
                                    expect=(400,)),
        "gzip_header_plain_body": HostileRequest(COMPLETIONS, ok, headers={"content-type": "application/json",
                                                                            "content-encoding": "gzip"}),
        "gzip_body": HostileRequest(COMPLETIONS, gzip.compress(ok), headers={"content-type": "application/json",
                                                                              "content-encoding": "gzip"}),
    }


def check_reply(response: httpx.Response, expect: tuple[int, ...] | None = None) -> str:
    """Asserts a reply is no server error and well formed; returns a label for the tally ("200 stream", "400")."""
    status = response.status_code
    what = f"{status} {response.headers.get('content-type')}: {response.content[:400]!r}"
    assert status < 500, f"server error: {what}"
    assert expect is None or status in expect, f"expected {expect}, got {what}"
    if not 200 <= status < 300:
        check_error_body(_json(response.content, what), what)
        return str(status)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        check_stream(response.text)
        return f"{status} stream"
    assert isinstance(_json(response.content, what), dict), f"2xx body is not a JSON object: {what}"
    return str(status)


def check_error_body(body: Any, what: str = "") -> None:
    """OpenAI's error shape, which its official client reads: {"error": {"message", "type", "code"}}."""
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"not an OpenAI error body: {what}"
    assert isinstance(error.get("message"), str) and isinstance(error.get("type"), str), what
    assert "code" in error, what


def check_stream(text: str) -> None:
    """Every SSE `data:` line is JSON or [DONE], the last one is [DONE], and no event carries a server error."""
    events = [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]
    assert events and events[-1] == "[DONE]", f"stream does not end with [DONE]: {text[-400:]!r}"
    for event in events[:-1]:
        chunk = _json(event.encode(), event)
        assert isinstance(chunk, dict), f"stream event is not a JSON object: {event[:400]}"
        if "error" in chunk:
            check_error_body(chunk, event)
            code = chunk["error"]["code"]
            assert not (isinstance(code, int) and code >= 500), f"server error inside a stream: {event[:400]}"


def _json(content: bytes, what: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:
        raise AssertionError(f"body is not JSON ({exc}): {what}") from exc
