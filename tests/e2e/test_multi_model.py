"""Several models behind one router on CPU, two of them split over two real engine processes: tensor and pipeline
parallel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Server, start_server, stop_server

PROMPTS = ["What is the capital of France?", "Once upon a time", "def fibonacci(n):", "The weather today"]
# The random Llama split over two engine processes, one core each: by its layers' weights, and by its layers.
SPLIT = {"tiny-random-tp2": {"tensor": 2}, "tiny-random-pp2": {"pipeline": 2}}


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """configs/local-multi.yaml plus the random Llama again at tensor parallel 2 and at pipeline parallel 2."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "local-multi.yaml").read_text())
    (tiny,) = [m for m in config["models"] if m["name"] == "tiny-random"]
    # Four engines share the two cores of a 2-core machine: Ray's shares are what lets them all start; each
    # rank of a split model is still bound to a core of its own.
    quarter = {**tiny["resources"], "cpus_per_worker": 0.25}
    for name, parallelism in SPLIT.items():
        config["models"].append({**tiny, "name": name, "aliases": [], "parallelism": parallelism,
                                 "resources": quarter})
    config["router"]["cpus"] = 0
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
    assert {"smollm2", "default", "tiny-random", "tiny", *SPLIT} <= set(cards)
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


@pytest.mark.parametrize("split_model", SPLIT)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_two_ranks_give_the_same_greedy_tokens_as_one(client: openai.OpenAI, prompt: str, split_model: str) -> None:
    single = greedy(client, "tiny-random", prompt).choices[0]
    split = greedy(client, split_model, prompt).choices[0]
    assert len(single.model_extra["token_ids"]) == 16
    assert split.model_extra["token_ids"] == single.model_extra["token_ids"]
    assert split.text == single.text
