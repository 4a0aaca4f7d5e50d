"""Readiness: ready only when every model with min_replicas > 0 has a running replica, in a recent snapshot."""

from __future__ import annotations

from serve_app.readiness import ServedModel, readiness
from tests.state_fakes import APP, NOW, deployment, replica, snapshot

ALWAYS = ServedModel("chat", "model-chat", min_replicas=1)
SCALES_TO_ZERO = ServedModel("batchy", "model-batchy", min_replicas=0)


def test_ready_when_each_required_model_has_a_running_replica() -> None:
    state = snapshot({"model-chat": deployment(replica("a", "STARTING"), replica("b", "RUNNING"))})
    assert readiness(state, APP, [ALWAYS], NOW, max_age_s=10).ready


def test_not_ready_while_the_model_loads() -> None:
    state = snapshot({"model-chat": deployment(replica("a", "STARTING"))})
    result = readiness(state, APP, [ALWAYS], NOW, max_age_s=10)
    assert not result.ready and result.not_ready == ("chat",)
    assert "chat" in result.reason


def test_a_model_that_may_scale_to_zero_never_holds_readiness_back() -> None:
    state = snapshot({"model-chat": deployment(replica("a")), "model-batchy": deployment(min_replicas=0)})
    assert readiness(state, APP, [ALWAYS, SCALES_TO_ZERO], NOW, max_age_s=10).ready


def test_a_missing_deployment_or_application_is_not_ready() -> None:
    state = snapshot({})
    assert readiness(state, APP, [ALWAYS], NOW, 10).not_ready == ("chat",)
    assert not readiness(state, "another-app", [ALWAYS], NOW, 10).ready


def test_an_unknown_or_stale_state_is_not_ready() -> None:
    assert "not known" in readiness(None, APP, [ALWAYS], NOW, 10).reason
    state = snapshot({"model-chat": deployment(replica("a"))}, taken_at=NOW - 30)
    result = readiness(state, APP, [ALWAYS], NOW, max_age_s=10)
    assert not result.ready and "30s old" in result.reason


def test_nothing_required_is_ready() -> None:
    assert readiness(snapshot({}), APP, [SCALES_TO_ZERO], NOW, 10).ready
