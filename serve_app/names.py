"""Names of the Serve deployments a cluster config becomes; shared by the builder, the router and the CLI."""

from __future__ import annotations

import re

from serve_app.config import ModelConfig

ROUTER_DEPLOYMENT = "router"
MODEL_DEPLOYMENT_PREFIX = "model-"


def model_deployment_name(model: ModelConfig) -> str:
    return MODEL_DEPLOYMENT_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", model.name)
