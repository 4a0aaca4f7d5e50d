"""The router's app under hostile input against a fake model: no 5xx, every error an OpenAI error body."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from serve_app.router import ModelCatalog, ModelRoute, create_api
from tests.fakes import FakeModelHandle, echo_script
from tests.hostile import HostileRequest, check_reply, hostile_bodies, raw_noise

MODEL = "smollm2"
RAW = raw_noise(MODEL)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    route = ModelRoute(name=MODEL, aliases=("default",), handle=FakeModelHandle(echo_script(["fuzz", "reply"])),
                       cold_start_timeout_s=5, max_model_len=4096, created=1)
    # A server error must come back as a status to check, not as the app's exception.
    with TestClient(create_api(ModelCatalog([route])), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("name", list(RAW))
def test_raw_noise_gets_a_4xx_or_a_well_formed_reply(client: TestClient, name: str) -> None:
    check_reply(RAW[name].send(client), RAW[name].expect)


def test_hypothesis_bodies_get_no_server_error(client: TestClient) -> None:
    tally: Counter[str] = Counter()

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=hostile_bodies(MODEL))
    def fuzz(request: HostileRequest) -> None:
        tally[check_reply(request.send(client), request.expect)] += 1

    fuzz()
    print(f"\nrouter fuzz, hypothesis bodies: {sum(tally.values())} cases, {dict(tally)}")
    assert sum(tally.values()) >= 30, f"too few cases ran: {dict(tally)}"
