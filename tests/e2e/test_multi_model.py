"""Several models behind one router on CPU, one of them tensor parallel across two real engine processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Server, start_server, stop_server

PROMPTS = ["What is the capital of France?", "Once upon a time", "def fibonacci(n):", "The weather today"]


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """configs/local-multi.yaml plus the random Llama again at tensor parallel 2."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "local-multi.yaml").read_text())
    (tiny,) = [m for m in config["models"] if m["name"] == "tiny-random"]
    config["models"].append({**tiny, "name": "tiny-random-tp2", "aliases": [], "parallelism": {"tensor": 2}})
    config["router"]["cpus"] = 0  # three engines already claim both cores of a 2-core machine
    folder: Path = tmp_path_factory.mktemp("multi")
    (folder / "multi.yaml").write_text(yaml.safe_dump(config))
    server = start_server(folder / "multi.yaml", folder / "serve.log")
    yield server
    assert stop_server(server) == 0, server.log_tail()


@pytest.fixture(scope="module")
def client(multi: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=multi.base_url, api_key="unused", max_retries=0, timeout=180)


def greedy(client: openai.OpenAI, model: str, prompt: str) -> openai.types.Completion:
    return client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=16,
                                     extra_body={"return_token_ids": True})


def test_models_lists_every_name_and_alias(client: openai.OpenAI) -> None:
    cards = {card.id: card for card in client.models.list()}
    assert {"smollm2", "default", "tiny-random", "tiny", "tiny-random-tp2"} <= set(cards)
    assert all(card.owned_by == "llmcluster" for card in cards.values())
    assert cards["tiny"].model_extra["max_model_len"] == 2048


def test_each_request_reaches_the_model_it_names(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": PROMPTS[0]}]
    demo = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=24)
    tiny = client.chat.completions.create(model="tiny-random", messages=question, temperature=0, max_tokens=24)
    assert demo.model == "smollm2" and tiny.model == "tiny-random"
    assert "Paris" in demo.choices[0].message.content
    assert "Paris" not in tiny.choices[0].message.content
    assert demo.choices[0].message.content != tiny.choices[0].message.content


def test_alias_reaches_the_same_model(client: openai.OpenAI) -> None:
    by_alias, by_name = greedy(client, "tiny", PROMPTS[1]), greedy(client, "tiny-random", PROMPTS[1])
    assert by_alias.choices[0].text == by_name.choices[0].text


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tensor_parallel_2_gives_the_same_greedy_tokens_as_1(client: openai.OpenAI, prompt: str) -> None:
    single = greedy(client, "tiny-random", prompt).choices[0]
    split = greedy(client, "tiny-random-tp2", prompt).choices[0]
    assert len(single.model_extra["token_ids"]) == 16
    assert split.model_extra["token_ids"] == single.model_extra["token_ids"]
    assert split.text == single.text
