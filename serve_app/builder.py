"""Builds the Serve application of a cluster config: one deployment per model behind one router."""

from __future__ import annotations

import re
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import ClusterConfig, ModelConfig, load_config, parse_config
from serve_app.llm_server import LLMServer
from serve_app.placement import replica_placement
from serve_app.router import OpenAIRouter
from serve_app.tenancy.keys import served_model_names
from serve_app.tenancy.quota_deployment import LEDGER_DEPLOYMENT, LedgerReplica
from serve_app.vllm_adapter import VLLMEngine

ROUTER_DEPLOYMENT = "router"
MODEL_DEPLOYMENT_PREFIX = "model-"
# A router replica only relays bytes; it can hold many requests at once.
ROUTER_MAX_ONGOING_REQUESTS = 4096
ENGINE_HEALTH_CHECK_PERIOD_S = 10
ENGINE_HEALTH_CHECK_TIMEOUT_S = 30
ENGINE_GRACEFUL_SHUTDOWN_S = 20


def model_deployment_name(model: ModelConfig) -> str:
    return MODEL_DEPLOYMENT_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", model.name)


def autoscaling_options(model: ModelConfig) -> dict[str, Any]:
    scaling = model.autoscaling
    options: dict[str, Any] = {"max_ongoing_requests": scaling.max_ongoing_requests}
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.min_replicas
        return options
    options["autoscaling_config"] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "initial_replicas": scaling.initial_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "look_back_period_s": scaling.look_back_period_s,
    }
    return options


def model_application(model: ModelConfig, engine_cls: type) -> Application:
    deployment = serve.deployment(LLMServer).options(
        name=model_deployment_name(model),
        health_check_period_s=ENGINE_HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=ENGINE_HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=ENGINE_GRACEFUL_SHUTDOWN_S,
        **autoscaling_options(model),
        **replica_placement(model).deployment_options(),
    )
    return deployment.bind(model, engine_cls)


def build_application(config: ClusterConfig, engine_cls: type = VLLMEngine) -> Application:
    """The whole cluster as one Serve application; `engine_cls` is swapped for a fake in fast tests."""
    handles = {model.name: model_application(model, engine_cls) for model in config.models}
    router = serve.deployment(serve.ingress()(OpenAIRouter)).options(
        name=ROUTER_DEPLOYMENT,
        num_replicas=config.router.replicas,
        max_ongoing_requests=ROUTER_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": config.router.cpus},
    )
    return router.bind(config, handles, ledger_application(config))


def ledger_application(config: ClusterConfig) -> Application:
    """The quota ledger all router replicas lease from: one replica, no reserved core (it only counts)."""
    ledger = serve.deployment(LedgerReplica).options(
        name=LEDGER_DEPLOYMENT, num_replicas=1, max_ongoing_requests=ROUTER_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": 0})
    return ledger.bind(config.router, served_model_names(config))


def build_app(args: dict[str, Any]) -> Application:
    """Serve `import_path` entry point: args hold the config inline (`config`) or a file (`config_path`)."""
    if "config" in args:
        return build_application(parse_config(args["config"]))
    return build_application(load_config(args["config_path"]))
