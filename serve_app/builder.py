"""Builds the Serve application of a cluster config: one deployment per model behind one router."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import ClusterConfig, ModelConfig, load_config, longest_drain_s, parse_config
from serve_app.engine_protocol import Engine
from serve_app.llm_server import LLMServer
from serve_app.log_setup import internal_logging_config
from serve_app.metrics.hub_deployment import METRICS_HUB_DEPLOYMENT, MetricsHubReplica
from serve_app.names import MODEL_DEPLOYMENT_PREFIX, ROUTER_DEPLOYMENT, model_deployment_name
from serve_app.placement import replica_placement
from serve_app.router import OpenAIRouter
from serve_app.tenancy.keys import served_model_names
from serve_app.tenancy.quota_deployment import LEDGER_DEPLOYMENT, LedgerReplica
from serve_app.tracing import exporter_env
from serve_app.vllm_adapter import VLLMEngine

# A router replica only relays bytes; it can hold many requests at once.
ROUTER_MAX_ONGOING_REQUESTS = 4096
# How often a draining replica counts its in-flight requests: it stops at most this long after the last one ends.
DRAIN_POLL_S = 1.0


def autoscaling_options(model: ModelConfig) -> dict[str, Any]:
    """Serve's replica counts: the config counts replicas of the model, and each is `parallelism.data` Serve
    replicas (a gang, one per data-parallel rank), so Serve's counts are the config's times that."""
    scaling, ranks = model.autoscaling, model.parallelism.data
    options: dict[str, Any] = {"max_ongoing_requests": scaling.max_ongoing_requests}
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.min_replicas * ranks
        return options
    initial = scaling.initial_replicas
    options["autoscaling_config"] = {
        "min_replicas": scaling.min_replicas * ranks,
        "max_replicas": scaling.max_replicas * ranks,
        "initial_replicas": None if initial is None else initial * ranks,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "look_back_period_s": scaling.look_back_period_s,
    }
    return options


def drain_options(timeout_s: float) -> dict[str, float]:
    """Serve's graceful shutdown of a replica: wait for its in-flight requests up to `timeout_s`, then stop it.

    The engine's own shutdown runs inside the same budget; past it Serve kills the replica, and the engine's
    processes die with it (see vllm_adapter.fate_share_engine_process)."""
    return {"graceful_shutdown_timeout_s": timeout_s, "graceful_shutdown_wait_loop_s": DRAIN_POLL_S}


def health_options(model: ModelConfig) -> dict[str, float]:
    """Serve's health checks of a model replica; the check itself also fails for a hung engine (liveness.py)."""
    return {"health_check_period_s": model.health.check_period_s,
            "health_check_timeout_s": model.health.check_timeout_s}


def with_env(options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Deployment `options` whose replicas also get `env` in their process environment."""
    if not env:
        return options
    actor = options.get("ray_actor_options", {})
    runtime_env = actor.get("runtime_env", {})
    env_vars = {**runtime_env.get("env_vars", {}), **env}
    return {**options, "ray_actor_options": {**actor, "runtime_env": {**runtime_env, "env_vars": env_vars}}}


def model_application(model: ModelConfig, engine_cls: type[Engine], metrics_hub: Application | None = None,
                      cluster: ClusterConfig | None = None) -> Application:
    """One model's deployment; `cluster` supplies the log format and the tracing exporter's environment."""
    env = exporter_env(cluster.router.tracing) if cluster else {}
    deployment = serve.deployment(LLMServer).options(
        name=model_deployment_name(model),
        **health_options(model),
        **drain_options(model.drain_timeout_s),
        **autoscaling_options(model),
        **with_env(replica_placement(model).deployment_options(), env),
    )
    return deployment.bind(model, engine_cls, metrics_hub, cluster.logging if cluster else None)


def build_application(config: ClusterConfig, engine_cls: type[Engine] = VLLMEngine) -> Application:
    """The whole cluster as one Serve application; `engine_cls` is swapped for a fake in fast tests."""
    hub = metrics_hub_application(config)
    handles = {model.name: model_application(model, engine_cls, hub, config) for model in config.models}
    router = serve.deployment(serve.ingress()(OpenAIRouter)).options(
        name=ROUTER_DEPLOYMENT,
        num_replicas=config.router.replicas,
        max_ongoing_requests=ROUTER_MAX_ONGOING_REQUESTS,
        **with_env({"ray_actor_options": {"num_cpus": config.router.cpus}}, exporter_env(config.router.tracing)),
        # The router relays the models' streams: it must not be stopped before their longest drain is over.
        **drain_options(longest_drain_s(config)),
    )
    return router.bind(config, handles, ledger_application(config), hub)


def ledger_application(config: ClusterConfig) -> Application:
    """The quota ledger all router replicas lease from: one replica, no reserved core (it only counts)."""
    ledger = serve.deployment(LedgerReplica).options(
        name=LEDGER_DEPLOYMENT, num_replicas=1, max_ongoing_requests=ROUTER_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": 0}, logging_config=internal_logging_config(config.logging))
    return ledger.bind(config.router, served_model_names(config))


def metrics_hub_application(config: ClusterConfig) -> Application:
    """The hub every router and engine replica sends its metrics to, for /metrics: one replica, no core."""
    hub = serve.deployment(MetricsHubReplica).options(
        name=METRICS_HUB_DEPLOYMENT, num_replicas=1, max_ongoing_requests=ROUTER_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": 0}, logging_config=internal_logging_config(config.logging))
    return hub.bind({model_deployment_name(model): model.name for model in config.models})


def build_app(args: dict[str, Any]) -> Application:
    """Serve `import_path` entry point: args hold the config inline (`config`) or a file (`config_path`)."""
    if "config" in args:
        return build_application(parse_config(args["config"]))
    return build_application(load_config(args["config_path"]))
