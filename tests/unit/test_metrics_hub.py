"""Gathering metrics across replicas: families as data, the hub, and what /metrics on one router replica shows."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from serve_app.metrics import MetricsHub, RouterMetrics, exposition, families_of
from serve_app.metrics.hub_deployment import VLLM_PREFIX
from serve_app.metrics.hub_link import HubLink


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def engine_registry() -> CollectorRegistry:
    """What vLLM's PrometheusStatLogger leaves in an engine replica's registry, in miniature."""
    registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "running", ["model_name", "engine"], registry=registry).labels("m", "0").set(2)
    Histogram("vllm:time_to_first_token_seconds", "ttft", ["model_name", "engine"], buckets=(0.1, 1),
              registry=registry).labels("m", "0").observe(0.5)
    Counter("process_cpu_seconds", "not vLLM's", registry=registry).inc()
    return registry


def parsed(text: bytes) -> list:
    return list(text_string_to_metric_families(text.decode()))


def test_families_keep_a_prefix_add_labels_and_drop_created_samples() -> None:
    families = families_of(engine_registry(), prefix=VLLM_PREFIX, labels={"model": "m", "replica": "e1"})
    assert [f.name for f in families] == ["vllm:num_requests_running", "vllm:time_to_first_token_seconds"]
    names = {s.name for f in families for s in f.samples}
    assert not [n for n in names if n.endswith("_created")]
    running = dict(families[0].samples[0].labels)
    assert running == {"model_name": "m", "engine": "0", "model": "m", "replica": "e1"}


def test_exposition_merges_a_family_from_several_sources_under_one_header() -> None:
    first = families_of(engine_registry(), prefix=VLLM_PREFIX, labels={"replica": "a"})
    second = families_of(engine_registry(), prefix=VLLM_PREFIX, labels={"replica": "b"})
    text = exposition([*first, *second, *first]).decode()
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    running = [s for f in parsed(text.encode()) for s in f.samples if s.name == "vllm:num_requests_running"]
    assert sorted(s.labels["replica"] for s in running) == ["a", "b"]  # the repeated source is not doubled


def test_the_hub_forgets_silent_sources_and_leaves_out_the_asker() -> None:
    clock = Clock()
    hub = MetricsHub({}, stale_after_s=15, clock=clock)
    asyncio.run(hub.push("router/a", families_of(engine_registry(), prefix="vllm:num")))
    clock.now = 10
    asyncio.run(hub.push("engine/b", families_of(engine_registry(), prefix="vllm:time")))
    gathered = asyncio.run(hub.gather(exclude="engine/b"))
    assert [f.name for f in gathered] == ["vllm:num_requests_running", "llmcluster_replicas"]
    clock.now = 20  # router/a last spoke 20 s ago: gone, as a stopped replica is
    assert [f.name for f in asyncio.run(hub.gather())] == ["vllm:time_to_first_token_seconds", "llmcluster_replicas"]


def test_replicas_by_state_cover_models_only_with_zeros_for_empty_states() -> None:
    hub = MetricsHub({"model-m": "m"})
    hub.record_replicas({"model-m": {"RUNNING": 2, "STARTING": 1}, "router": {"RUNNING": 1}})
    (family,) = [f for f in asyncio.run(hub.gather()) if f.name == "llmcluster_replicas"]
    counts = {dict(s.labels)["state"]: s.value for s in family.samples}
    assert {dict(s.labels)["model"] for s in family.samples} == {"m"}
    assert counts["RUNNING"] == 2 and counts["STARTING"] == 1 and counts["STOPPING"] == 0


def test_any_router_replica_shows_every_router_and_engine_replica() -> None:
    async def scenario() -> bytes:
        hub = MetricsHub({"model-m": "m"})
        hub.record_replicas({"model-m": {"RUNNING": 1}})
        first = RouterMetrics(replica="r1", hub=HubLink(hub, "router/r1"))
        second = RouterMetrics(replica="r2", hub=HubLink(hub, "router/r2"))
        engine = HubLink(hub, "engine/e1")
        first.request("m", "team-a").finished(200, 3, 4)
        second.request("m", "team-b").finished(500)
        await second._hub.push(second.families())
        await engine.push(families_of(engine_registry(), prefix=VLLM_PREFIX, labels={"model": "m", "replica": "e1"}))
        return await first.exposition()

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parsed(asyncio.run(scenario()))
               for s in f.samples}
    assert samples[("llmcluster_requests_total", (("key", "team-a"), ("model", "m"), ("replica", "r1"),
                                                   ("status", "200")))] == 1
    assert samples[("llmcluster_requests_total", (("key", "team-b"), ("model", "m"), ("replica", "r2"),
                                                   ("status", "500")))] == 1
    assert samples[("vllm:num_requests_running", (("engine", "0"), ("model", "m"), ("model_name", "m"),
                                                  ("replica", "e1")))] == 2
    assert samples[("llmcluster_replicas", (("model", "m"), ("state", "RUNNING")))] == 1


class HangingHub:
    async def push(self, source: str, families: list) -> None:
        await asyncio.sleep(60)

    async def gather(self, exclude: str | None = None) -> list:
        raise ConnectionError("hub replica is restarting")


def test_a_hub_that_fails_leaves_a_replica_its_own_metrics() -> None:
    async def scenario() -> bytes:
        metrics = RouterMetrics(replica="r1", hub=HubLink(HangingHub(), "router/r1", timeout_s=0.05))
        metrics.request("m", None).finished(200)
        await metrics._hub.push(metrics.families())  # times out, logs, returns
        return await metrics.exposition()

    assert b'llmcluster_requests_total{key="-",model="m",replica="r1",status="200"} 1.0' in asyncio.run(scenario())


def test_the_link_pushes_on_a_timer_while_the_app_runs() -> None:
    async def scenario() -> int:
        hub = MetricsHub({})
        metrics = RouterMetrics(replica="r1", hub=HubLink(hub, "router/r1", every_s=0.01))
        async with metrics.lifespan():
            metrics.request("m", None).finished(200)
            await asyncio.sleep(0.05)
        return sum(1 for f in await hub.gather() if f.name == "llmcluster_requests"
                   for s in f.samples if s.value == 1)

    assert asyncio.run(scenario()) == 1
