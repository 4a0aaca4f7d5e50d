"""/ready and /admin/status on the router: answered from the watched cluster state; status needs an admin key."""

from __future__ import annotations

from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from serve_app.config import AuthConfig, RouterConfig
from serve_app.ops_routes import OpsEndpoints
from serve_app.readiness import ServedModel
from serve_app.router import ModelCatalog, ModelRoute, create_api
from serve_app.tenancy.keys import KeyStore, Quota, Tenant, digest_of, load_key_store
from tests.fakes import FakeModelHandle, echo_script
from tests.state_fakes import APP, NOW, FixedWatch, deployment, replica, snapshot

MODELS = [ServedModel("chat", "model-chat", 1), ServedModel("lazy", "model-lazy", 0)]
LOADING = {"model-chat": deployment(replica("a", "STARTING")), "model-lazy": deployment(min_replicas=0)}
RUNNING = {"model-chat": deployment(replica("a", "RUNNING")), "model-lazy": deployment(min_replicas=0)}
KEYS = KeyStore({digest_of("sk-ops"): Tenant("ops", None, Quota(), admin=True),
                 digest_of("sk-user"): Tenant("user", None, Quota())})


def routes() -> list[ModelRoute]:
    handle = FakeModelHandle(echo_script(["hi"]))
    return [ModelRoute(name=m.name, aliases=(), handle=handle, cold_start_timeout_s=5, max_model_len=None, created=1)
            for m in MODELS]


def client(watch: FixedWatch, keys: KeyStore | None = None) -> tuple[TestClient, list[ModelRoute]]:
    served = routes()
    ops = OpsEndpoints(APP, MODELS, served, watch, clock=lambda: NOW + 1)
    return TestClient(create_api(ModelCatalog(served), keys, ops=ops)), served


def test_ready_is_503_while_a_required_model_loads_and_200_once_it_runs() -> None:
    watch = FixedWatch(snapshot(LOADING))
    http, _ = client(watch)
    response = http.get("/ready", headers={"X-Request-Id": "probe-1"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    body = response.json()
    assert body["not_ready"] == ["chat"] and "chat" in body["error"]["message"]
    assert body["error"]["request_id"] == "probe-1" == response.headers["x-request-id"]
    watch.snapshot = snapshot(RUNNING)
    assert http.get("/ready").json() == {"status": "ready"}


def test_health_with_ready_answers_as_ready_does_and_plain_health_stays_liveness() -> None:
    watch = FixedWatch(snapshot(LOADING))
    http, _ = client(watch, KEYS)  # /health is public: a probe sends no key
    assert http.get("/health").json() == {"status": "ok"}
    waiting = http.get("/health?ready=1")
    assert waiting.status_code == 503 and waiting.json()["not_ready"] == ["chat"]
    watch.snapshot = snapshot(RUNNING)
    assert http.get("/health", params={"ready": "true"}).json() == {"status": "ready"}


def test_ready_says_why_when_the_state_is_unknown() -> None:
    http, _ = client(FixedWatch(None, error="ConnectionError: controller gone"))
    response = http.get("/ready")
    assert response.status_code == 503 and "controller gone" in response.json()["error"]["message"]


def test_ready_needs_no_key_but_status_needs_an_admin_key() -> None:
    http, _ = client(FixedWatch(snapshot(RUNNING)), KEYS)
    assert http.get("/ready").status_code == 200
    assert http.get("/admin/status").status_code == 401
    assert http.get("/admin/status", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    refused = http.get("/admin/status", headers={"Authorization": "Bearer sk-user"})
    assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
    assert http.get("/admin/status", headers={"Authorization": "Bearer sk-ops"}).status_code == 200


def test_status_reports_replicas_nodes_and_this_routers_requests() -> None:
    http, served = client(FixedWatch(snapshot(RUNNING)))
    served[0].queue.enter().taken()  # one request being served
    served[0].queue.enter()  # one waiting for a replica
    doc = http.get("/admin/status").json()
    assert doc["source"] == "router" and doc["ready"] and doc["age_s"] == 1.0
    chat = {m["name"]: m for m in doc["models"]}["chat"]
    assert chat["running"] == 1 and chat["in_flight"] == 1 and chat["queued"] == 1
    assert chat["replicas"][0]["state"] == "RUNNING" and doc["nodes"][0]["address"] == "10.0.0.1"


def test_status_is_503_until_a_state_is_known() -> None:
    http, _ = client(FixedWatch(None))
    response = http.get("/admin/status")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"


def test_routes_are_absent_without_ops() -> None:
    http = TestClient(create_api(ModelCatalog(routes())))
    assert http.get("/ready").status_code == 404


def test_admin_flag_in_the_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "ops", "key": "sk-ops", "models": ["*"], "admin": True},
                                             {"name": "team", "key": "sk-team", "models": ["*"]}]}))
    store = load_key_store(RouterConfig(auth=AuthConfig(keys_file=str(path))), {"chat": "chat"}, {})
    assert store.authenticate("sk-ops").admin and not store.authenticate("sk-team").admin
