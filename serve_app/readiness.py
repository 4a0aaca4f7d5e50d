"""Whether the cluster is ready for traffic: every model that must always run has a running replica."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.cluster_state import ClusterSnapshot


@dataclass(frozen=True)
class ServedModel:
    """A model as readiness and status see it: its name, its Serve deployment and its replica floor."""

    name: str
    deployment: str
    min_replicas: int


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    not_ready: tuple[str, ...] = ()  # models that must run and have no running replica


def readiness(snapshot: ClusterSnapshot | None, app_name: str, models: list[ServedModel], now: float,
              max_age_s: float) -> Readiness:
    """Ready when each model with min_replicas > 0 has a RUNNING replica in `app_name`, in a snapshot taken
    within `max_age_s` of `now`. A model allowed to scale to zero never holds readiness back: a request wakes
    it. An old or missing snapshot is not ready: the state is not known."""
    if snapshot is None:
        return Readiness(False, "the cluster state is not known yet")
    age_s = now - snapshot.taken_at
    if age_s > max_age_s:
        return Readiness(False, f"the cluster state is {age_s:.0f}s old: the Serve controller does not answer")
    waiting = tuple(model.name for model in models if model.min_replicas > 0
                    and _running(snapshot, app_name, model.deployment) == 0)
    if waiting:
        return Readiness(False, f"no running replica yet for model(s): {', '.join(waiting)}", waiting)
    return Readiness(True)


def _running(snapshot: ClusterSnapshot, app_name: str, deployment: str) -> int:
    view = snapshot.deployment(app_name, deployment)
    return view.running if view else 0
