"""Wiring the metrics into Serve: the hub as a deployment, and the links of router and engine replicas to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from serve_app.metrics.families import families_of
from serve_app.metrics.hub import PUSH_EVERY_S, MetricsHub
from serve_app.metrics.hub_link import HubLink, ServeHubClient, replica_id
from serve_app.metrics.router_metrics import RouterMetrics, catalog_queues

logger = logging.getLogger(__name__)

METRICS_HUB_DEPLOYMENT = "metrics-hub"
# vLLM's own metric names all start with this; the engine replica's registry also holds process metrics.
VLLM_PREFIX = "vllm:"


def router_metrics(routes: Iterable[Any], hub_handle: Any) -> RouterMetrics:
    """A router replica's metrics, linked to the hub when there is one (there is under Serve)."""
    replica = replica_id()
    hub = HubLink(ServeHubClient(hub_handle), source=f"router/{replica}") if hub_handle is not None else None
    return RouterMetrics(catalog_queues(routes), replica=replica, hub=hub)


def start_engine_metrics(hub_handle: Any, model: str, registry: Any) -> HubLink:
    """Sends the `vllm:` metrics of an engine replica's `registry` to the hub, labelled with the model's name
    and the replica's id. Call from the replica's event loop."""
    replica = replica_id()
    link = HubLink(ServeHubClient(hub_handle), source=f"engine/{replica}")
    labels = {"model": model, "replica": replica}
    link.start(lambda: families_of(registry, prefix=VLLM_PREFIX, labels=labels))
    return link


class MetricsHubReplica(MetricsHub):
    """The cluster's one hub, a Serve deployment of one replica; it also polls Serve for replica states."""

    async def __init__(self, model_deployments: Mapping[str, str]) -> None:
        from ray import serve

        super().__init__(model_deployments)
        self._app = serve.get_replica_context().app_name
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            try:
                # serve.status() blocks on the controller: off the event loop that answers pushes and scrapes.
                self.record_replicas(await asyncio.to_thread(_replica_states, self._app))
            except Exception as exc:  # the last counts stay; Serve's controller may be restarting
                logger.warning("could not read replica states from Serve: %r", exc)
            await asyncio.sleep(PUSH_EVERY_S)


def _replica_states(app: str) -> dict[str, dict[str, int]]:
    from ray import serve

    application = serve.status().applications.get(app)
    if application is None:
        return {}
    return {name: {str(getattr(state, "value", state)): count for state, count in dep.replica_states.items()}
            for name, dep in application.deployments.items()}
