"""Prometheus metrics: the router's own, vLLM's from every engine replica, gathered by a hub for GET /metrics."""

from serve_app.metrics.families import CONTENT_TYPE, Family, exposition, families_of
from serve_app.metrics.hub import MetricsHub
from serve_app.metrics.observation import RequestObservation
from serve_app.metrics.router_metrics import NO_KEY, QueueDepth, RouterMetrics, catalog_queues

__all__ = ["CONTENT_TYPE", "Family", "MetricsHub", "NO_KEY", "QueueDepth", "RequestObservation", "RouterMetrics",
           "catalog_queues", "exposition", "families_of"]
