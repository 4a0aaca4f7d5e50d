"""The metrics hub: the latest metrics every replica sent, and replicas per model and state, for /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from serve_app.metrics.families import Family, families_of

# Replicas send every PUSH_EVERY_S; one silent for STALE_AFTER_S is gone (stopped, dead or moved), and so are
# its series, as Prometheus expects of a process that no longer runs.
PUSH_EVERY_S = 5.0
STALE_AFTER_S = 3 * PUSH_EVERY_S
# Serve's replica states (ray.serve._private.common.ReplicaState, less STOPPED): written with 0 when no replica
# is in them, so a graph of a model scaled to zero drops to 0 instead of ending.
REPLICA_STATES = ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "STOPPING", "PENDING_MIGRATION")


class HubClient(Protocol):
    """What a replica needs of the hub; MetricsHub itself satisfies it, in process."""

    async def push(self, source: str, families: list[Family]) -> None: ...

    async def gather(self, exclude: str | None = None) -> list[Family]: ...


class MetricsHub:
    """Keeps each source's (replica's) latest families and the model deployments' replica counts."""

    def __init__(self, model_deployments: Mapping[str, str], *, stale_after_s: float = STALE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._models = dict(model_deployments)  # Serve deployment name -> model name
        self._stale_after_s, self._clock = stale_after_s, clock
        self._sources: dict[str, tuple[float, list[Family]]] = {}
        self._replicas: dict[str, dict[str, int]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_ReplicaCollector(lambda: self._replicas))

    async def push(self, source: str, families: list[Family]) -> None:
        self._sources[source] = (self._clock(), families)

    async def gather(self, exclude: str | None = None) -> list[Family]:
        """Every live source's families but `exclude`'s (the caller has its own, fresher), then replica counts."""
        now = self._clock()
        for source in [s for s, (at, _) in self._sources.items() if now - at > self._stale_after_s]:
            del self._sources[source]
        gathered = [family for source, (_, families) in self._sources.items() if source != exclude
                    for family in families]
        return gathered + families_of(self._registry)

    def record_replicas(self, deployments: Mapping[str, Mapping[str, int]]) -> None:
        """Replica counts by state of each Serve deployment (as serve.status() gives them); models only."""
        self._replicas = {model: {state: int(deployments[name].get(state, 0))
                                  for state in {*REPLICA_STATES, *deployments[name]}}
                          for name, model in self._models.items() if name in deployments}


class _ReplicaCollector:
    def __init__(self, replicas: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("llmcluster_replicas", "Replicas of each model's deployment, by Serve's "
                                   "replica state.", labels=["model", "state"])
        for model, states in sorted(self._replicas().items()):
            for state, count in sorted(states.items()):
                family.add_metric([model, state], count)
        yield family

    def describe(self) -> list[Metric]:
        return []
