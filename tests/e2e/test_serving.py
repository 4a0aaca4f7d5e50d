"""The serving spine end to end: the official openai client against router, Ray Serve and vLLM on CPU."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families
import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Server, cli_status

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def test_greedy_chat_answers_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == "smollm2" and reply.usage.completion_tokens > 0


def test_streamed_chat_yields_the_same_text_in_chunks(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=32)
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=32,
                                            stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content


def test_alias_reaches_the_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content


def test_models_lists_the_model(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"smollm2", "default"} <= ids


def test_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="smollm2", prompt="The capital of France is", temperature=0,
                                      max_tokens=8)
    assert "Paris" in reply.choices[0].text


def test_streamed_text_completion(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="smollm2", prompt="One, two, three,", temperature=0, max_tokens=8,
                                       stream=True)
    assert len([chunk for chunk in stream if chunk.choices and chunk.choices[0].text]) > 1


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert "smollm2" in caught.value.message


@pytest.mark.parametrize("bad", [{"max_tokens": -1}, {"temperature": "hot"}, {"n": 0}, {"messages": "hello"},
                                 {"top_p": 7}])
def test_invalid_parameters_are_bad_requests(client: openai.OpenAI, bad: dict) -> None:
    arguments = {"model": "smollm2", "messages": QUESTION, **bad}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**arguments)


def test_completion_without_prompt_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smollm2", prompt="", max_tokens=4)


def test_malformed_json_is_a_bad_request(http: httpx.Client) -> None:
    response = http.post("/chat/completions", content=b'{"model": "smollm2", ', headers={"content-type":
                                                                                          "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"


def test_health(server: Server) -> None:
    assert httpx.get(f"http://127.0.0.1:{server.port}/health").json() == {"status": "ok"}


def _in_flight(server: Server) -> int:
    """Requests running or waiting in the demo model's engine, from vLLM's own metrics on the router's /metrics.

    Read through the router: `status --load` joins the Ray cluster recorded last, which other test stacks
    replace; the engine's figures reach /metrics within the hub's push period (5 s)."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30).text
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
                   for sample in family.samples if sample.labels.get("model") == "smollm2"))


def _wait_for_in_flight(server: Server, count: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while (seen := _in_flight(server)) != count and time.monotonic() < deadline:
        time.sleep(1)
    return seen


def test_dropped_stream_leaves_no_request_in_the_engine(client: openai.OpenAI, server: Server) -> None:
    # Long enough (about a minute on 2 cores) that only an abort can end it within the poll below.
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2000, stream=True,
                                            extra_body={"ignore_eos": True, "min_tokens": 2000})
    for count, _ in enumerate(stream):
        if count == 3:
            break
    assert _wait_for_in_flight(server, 1, 20) == 1, "the streaming request should be running in the engine"
    stream.close()
    assert _wait_for_in_flight(server, 0, 30) == 0


def test_status_shows_the_model_running(server: Server) -> None:
    status = cli_status(server=server)
    assert status["source"] == "router" and status["ready"]
    (app,) = status["applications"]
    assert app["status"] == "RUNNING"
    names = {d["name"]: d for d in app["deployments"]}
    assert names["model-smollm2"]["replicas"] == {"RUNNING": 1}
    assert names["router"]["status"] == "HEALTHY"


def test_readme_python_example_runs(server: Server) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    code = example.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{server.port}")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert "Paris" in namespace["reply"].choices[0].message.content


def test_readme_curl_example_runs(server: Server) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    (command,) = [block for block in re.findall(r"```bash\n(.*?)```", readme, re.S) if block.startswith("curl")]
    command = command.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{server.port}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Paris" in json.loads(result.stdout)["choices"][0]["message"]["content"]
