"""Wiring the metrics into Serve: the hub as a deployment, and the links of router and engine replicas to it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from serve_app.metrics.families import Family, families_of
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
    """The cluster's one hub, a Serve deployment of one replica. Its replica counts come from the same watch of
    Serve's state as the router's /ready, refreshed only while /metrics is scraped."""

    def __init__(self, model_deployments: Mapping[str, str]) -> None:
        from ray import serve

        from serve_app.cluster_state import StateWatch, serve_snapshot

        super().__init__(model_deployments)
        self._app = serve.get_replica_context().app_name
        # A scrape must not wait for a first snapshot (the router gives the hub 2 s); Prometheus scrapes
        # every 15 to 60 s, so the watch keeps running between scrapes.
        self._watch = StateWatch(serve_snapshot, every_s=PUSH_EVERY_S, first_wait_s=0.5, idle_stop_s=300)

    async def gather(self, exclude: str | None = None) -> list[Family]:
        snapshot = await self._watch.latest()  # the last counts stay while Serve's controller cannot answer
        app = snapshot.apps.get(self._app) if snapshot is not None else None
        if app is not None:
            self.record_replicas({name: dep.state_counts() for name, dep in app.deployments.items()})
        return await super().gather(exclude)
