"""Beyond chat on the real stack: embeddings from the demo model on vLLM's pooling runner, tokenization, structured
outputs and named tool calls (streaming too), and the Responses API, all through the router and the openai client."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import openai
import pytest

from tests.e2e.conftest import EMBED_MODEL, Server
from tests.hostile import check_reply

CHAT_MODEL = "smollm2"
TEXTS = ["Paris is the capital of France.", "The cat sat on the mat."]
CAPITAL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                  "required": ["city", "country"], "additionalProperties": False}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(server: Server) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120)


def hidden_size() -> int:
    """The demo model's hidden size, which its pooled (last-token) embedding has."""
    from serve_app.model_source import resolve_source

    return json.loads((Path(resolve_source("builtin:smollm2-135m-instruct")) / "config.json").read_text())[
        "hidden_size"]


def vectors(client: openai.OpenAI, texts: str | list[str], **extra: Any) -> np.ndarray:
    reply = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float", **extra)
    return np.array([item.embedding for item in sorted(reply.data, key=lambda item: item.index)])


def test_embeddings_have_the_models_dimension_and_the_same_text_gives_the_same_vector(client: openai.OpenAI) -> None:
    first, again = vectors(client, TEXTS[0]), vectors(client, TEXTS[0])
    assert first.shape == (1, hidden_size())
    assert np.array_equal(first, again)
    assert np.linalg.norm(first[0]) == pytest.approx(1.0, abs=1e-4)  # vLLM normalises embeddings
    assert not np.allclose(first, vectors(client, TEXTS[1]))


def test_a_batch_equals_the_single_calls(client: openai.OpenAI) -> None:
    batch = vectors(client, TEXTS)
    singles = np.concatenate([vectors(client, text) for text in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_base64_decodes_to_the_floats(client: openai.OpenAI, api: httpx.Client) -> None:
    reply = api.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": TEXTS, "encoding_format": "base64"})
    assert reply.status_code == 200, reply.text
    decoded = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in reply.json()["data"]]
    floats = vectors(client, TEXTS)
    np.testing.assert_allclose(np.stack(decoded), floats, rtol=0, atol=1e-7)
    # The openai client asks for base64 unless told otherwise, and decodes it itself.
    by_default = client.embeddings.create(model=EMBED_MODEL, input=TEXTS)
    np.testing.assert_allclose([item.embedding for item in by_default.data], floats, rtol=0, atol=1e-7)


def test_dimensions_shorten_a_matryoshka_model_and_beyond_its_size_is_a_400(client: openai.OpenAI) -> None:
    short = vectors(client, TEXTS[0], dimensions=64)
    assert short.shape == (1, 64) and np.linalg.norm(short[0]) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(openai.BadRequestError, match=rf"dimensions in range \[1, {hidden_size()}\]"):
        vectors(client, TEXTS[0], dimensions=100_000)


def test_a_request_for_another_task_is_a_400_naming_the_models_task(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="task 'embed'"):
        client.chat.completions.create(model=EMBED_MODEL, messages=WEATHER_QUESTION, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="task 'generate'"):
        client.embeddings.create(model=CHAT_MODEL, input="hi")


def test_tokenize_and_detokenize_are_routed_to_either_model(api: httpx.Client) -> None:
    ids = {model: api.post("/tokenize", json={"model": model, "prompt": "Hello world"}).json()["tokens"]
           for model in (CHAT_MODEL, EMBED_MODEL)}
    assert ids[CHAT_MODEL] == ids[EMBED_MODEL] and len(ids[CHAT_MODEL]) == 2  # the same weights and tokenizer
    text = api.post("/detokenize", json={"model": CHAT_MODEL, "tokens": ids[CHAT_MODEL]}).json()["prompt"]
    assert text == "Hello world"


def capital_as_json(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Name the capital of France as JSON."}],
        temperature=0, max_tokens=60, response_format={"type": "json_schema", "json_schema": {
            "name": "capital", "schema": CAPITAL_SCHEMA}}, **extra)


def test_a_json_schema_answer_validates_against_its_schema(client: openai.OpenAI) -> None:
    answer = json.loads(capital_as_json(client).choices[0].message.content)
    jsonschema.validate(answer, CAPITAL_SCHEMA)
    assert answer["city"] == "Paris"


def test_a_streamed_json_schema_answer_validates_too(client: openai.OpenAI) -> None:
    text = "".join(chunk.choices[0].delta.content or "" for chunk in capital_as_json(client, stream=True)
                   if chunk.choices)
    jsonschema.validate(json.loads(text), CAPITAL_SCHEMA)


@pytest.mark.parametrize("question", ["Answer in JSON with one key, capital: what is the capital of France?",
                                      "What is the capital of France?"])
def test_a_json_object_answer_is_json(client: openai.OpenAI, question: str) -> None:
    """Unconstrained, the demo model answers the second question in prose ("The capital of France is Paris.");
    asked for JSON it writes an object, though it may keep adding keys until max_tokens cuts it short."""
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": question}],
                                           temperature=0, max_tokens=60, response_format={"type": "json_object"})
    answer = reply.choices[0]
    assert answer.message.content.lstrip().startswith("{")
    if answer.finish_reason == "stop":
        assert isinstance(json.loads(answer.message.content), dict)


def weather_call(client: openai.OpenAI, **extra: Any) -> Any:
    # The call is written in the hermes parser's envelope (<tool_call>{"name": ..., "arguments": ...}</tool_call>),
    # some 50 tokens here: cut short, the envelope is not parsed and the answer is text.
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, **extra)


def test_a_named_tool_call_comes_back_with_arguments_valid_for_the_tool(client: openai.OpenAI) -> None:
    (call,) = weather_call(client).choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_a_streamed_named_tool_call_too(client: openai.OpenAI) -> None:
    names, arguments = [], []
    for chunk in weather_call(client, stream=True):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            names.append(call.function.name)
            arguments.append(call.function.arguments or "")
    assert [name for name in names if name] == ["get_weather"]
    jsonschema.validate(json.loads("".join(arguments)), WEATHER_TOOL["function"]["parameters"])


def test_the_responses_api_answers(client: openai.OpenAI) -> None:
    response = client.responses.create(model=CHAT_MODEL, input="What is the capital of France?", temperature=0,
                                       max_output_tokens=20)
    assert response.status == "completed" and response.id.startswith("resp_")
    assert "Paris" in response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_the_responses_api_streams_its_events_to_the_completed_response(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=CHAT_MODEL, input="What is the capital of France?", temperature=0,
                                          max_output_tokens=20, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert "Paris" in deltas and deltas == events[-1].response.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_the_responses_api_follows_a_json_schema(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=CHAT_MODEL, input="Name the capital of France as JSON.", temperature=0, max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "capital", "schema": CAPITAL_SCHEMA}})
    jsonschema.validate(json.loads(response.output_text), CAPITAL_SCHEMA)


ODD_BODIES = {  # case: (path, body, status)
    "embeddings-null-input": ("/v1/embeddings", {"model": EMBED_MODEL, "input": None}, 400),
    "embeddings-empty-ids": ("/v1/embeddings", {"model": EMBED_MODEL, "input": [[]]}, 400),
    "embeddings-id-past-vocabulary": ("/v1/embeddings", {"model": EMBED_MODEL, "input": [10**12]}, 400),
    "embeddings-text-dimensions": ("/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "dimensions": "wide"},
                                   400),
    "embeddings-bytes": ("/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "encoding_format": "bytes"}, 400),
    "embeddings-past-context": ("/v1/embeddings", {"model": EMBED_MODEL, "input": "word " * 3000}, 400),
    "responses-number-input": ("/v1/responses", {"model": CHAT_MODEL, "input": 5}, 400),
    "responses-message-without-content": ("/v1/responses", {"model": CHAT_MODEL, "input": [{"role": "user"}]},
                                          400),
    "responses-negative-max": ("/v1/responses", {"model": CHAT_MODEL, "input": "hi", "max_output_tokens": -1},
                               400),
    "responses-unknown-previous": ("/v1/responses", {"model": CHAT_MODEL, "input": "hi",
                                                     "previous_response_id": "resp_unknown"}, 404),
    "responses-background": ("/v1/responses", {"model": CHAT_MODEL, "input": "hi", "background": True}, 400),
    "tokenize-nothing": ("/tokenize", {"model": CHAT_MODEL}, 400),
    "tokenize-text-messages": ("/tokenize", {"model": CHAT_MODEL, "messages": "hi"}, 400),
    "detokenize-negative-id": ("/detokenize", {"model": CHAT_MODEL, "tokens": [-1]}, 400),
    "detokenize-id-past-vocabulary": ("/detokenize", {"model": CHAT_MODEL, "tokens": [10**12]}, 400),
    "detokenize-text": ("/detokenize", {"model": CHAT_MODEL, "tokens": "abc"}, 400),
}


@pytest.mark.parametrize("case", list(ODD_BODIES))
def test_odd_bodies_on_the_new_endpoints_get_openai_errors_not_5xx(api: httpx.Client, case: str) -> None:
    path, body, status = ODD_BODIES[case]
    check_reply(api.post(path, json=body), expect=(status,))
