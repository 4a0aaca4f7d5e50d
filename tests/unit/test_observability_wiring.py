"""Where the failure and visibility settings go: Serve's health checks, replica environments, the RayService."""

from __future__ import annotations

from typing import Any

from ray.serve.schema import ServeDeploySchema

from cluster.k8s_render import render, serve_config_v2
from serve_app.builder import build_application, health_options, with_env
from serve_app.config import ClusterConfig, parse_config
from serve_app.liveness import StallWatch
from serve_app.llm_server import engine_spec
from serve_app.tracing import ENDPOINT_ENV, PROTOCOL_ENV, exporter_env

TRACED = {"router": {"tracing": {"otlp_endpoint": "http://collector:4317"}}, "logging": {"format": "json"}}


def config(**sections: Any) -> ClusterConfig:
    model = {"name": "chat", "source": "org/chat", "health": {"check_period_s": 2, "stall_timeout_s": 45}}
    return parse_config({"models": [model], **sections})


def test_health_settings_reach_serves_checks_and_the_engine() -> None:
    cluster = config()
    assert health_options(cluster.models[0]) == {"health_check_period_s": 2, "health_check_timeout_s": 30}
    assert engine_spec(cluster.models[0], "/m").stall_timeout_s == 45


def test_tracing_gives_replicas_the_collectors_address() -> None:
    assert exporter_env(config(**TRACED).router.tracing).items() >= {ENDPOINT_ENV: "http://collector:4317",
                                                                      PROTOCOL_ENV: "grpc"}.items()
    assert exporter_env(config().router.tracing) == {}
    build_application(config(**TRACED))  # builds with the environment in place


def test_with_env_keeps_existing_environment() -> None:
    options = {"ray_actor_options": {"num_cpus": 1, "runtime_env": {"env_vars": {"A": "1"}, "pip": ["x"]}}}
    merged = with_env(options, {"B": "2"})
    assert merged["ray_actor_options"] == {"num_cpus": 1, "runtime_env": {"env_vars": {"A": "1", "B": "2"},
                                                                           "pip": ["x"]}}
    assert with_env(options, {}) is options


def test_the_rayservice_carries_serves_tracing_and_json_logs_and_the_pods_the_collector() -> None:
    cluster = config(**TRACED)
    serve_config = serve_config_v2(cluster)
    assert serve_config["tracing_config"]["exporter_import_path"] == "serve_app.tracing:otlp_span_processors"
    assert serve_config["logging_config"] == {"encoding": "JSON"}
    ServeDeploySchema.model_validate(serve_config)  # Serve accepts it as a deploy config
    head = render(cluster)["rayservice.yaml"]["spec"]["rayClusterConfig"]["headGroupSpec"]
    env = {e["name"]: e.get("value") for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env[ENDPOINT_ENV] == "http://collector:4317"
    assert "tracing_config" not in serve_config_v2(config()) and "logging_config" not in serve_config_v2(config())


def test_the_vllm_step_reporter_tells_the_watch_of_each_step() -> None:
    from serve_app.vllm_adapter import _step_reporter
    from vllm.v1.metrics.loggers import StatLoggerBase

    now = [0.0]
    watch = StallWatch(10, clock=lambda: now[0])
    reporter = _step_reporter(watch)(None, 0)  # vLLM builds one per engine: factory(vllm_config, engine_index)
    assert isinstance(reporter, StatLoggerBase)
    now[0] = 11.0
    reporter.record(scheduler_stats=None, iteration_stats=None, engine_idx=0)
    watch.check(in_flight=3)  # the step just now keeps it healthy
