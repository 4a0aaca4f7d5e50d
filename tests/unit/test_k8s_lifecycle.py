"""How rendered Ray pods enter and leave service: /ready on the RayService's workers only, and a drain on a
stopping worker whose deadline and grace period follow the models' drain timeouts."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main

from cluster import k8s_lifecycle, kuberay
from cluster.cli import app
from cluster.k8s_render import render
from serve_app.config import ClusterConfig, ConfigError, load_config, longest_drain_s
from tests.conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def spec_of(rendered: dict[str, Any], kind: str) -> dict[str, Any]:
    spec = rendered[kind]["spec"]
    return spec.get("rayClusterConfig") or spec["rayClusterSpec"]


def container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def pre_stop(group: dict[str, Any]) -> str:
    command = container(group)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return command[2]


def with_drains(config: ClusterConfig, *drains: float) -> ClusterConfig:
    models = [model.model_copy(update={"drain_timeout_s": drain}) for model, drain in zip(config.models, drains)]
    return config.model_copy(update={"models": (*models, *config.models[len(drains):])})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_serving_workers_are_ready_on_ready_and_drain_when_stopping(path: Path) -> None:
    config = load_config(path)
    spec = spec_of(render(config), "rayservice.yaml")
    deadline = k8s_lifecycle.drain_deadline_s(config)
    for group in spec["workerGroupSpecs"]:
        probe = container(group)["readinessProbe"]
        assert probe["httpGet"] == {"path": "/ready", "port": kuberay.SERVE_PORT_NAME}
        assert {"name": kuberay.SERVE_PORT_NAME, "containerPort": kuberay.SERVE_PORT} in container(group)["ports"]
        assert probe["periodSeconds"] * probe["failureThreshold"] <= 30  # an unready worker leaves within 30 s
        assert pre_stop(group) == (f"llmcluster drain-node --dashboard http://${{FQ_RAY_IP}}:"
                                   f"{kuberay.DASHBOARD_PORT} --deadline-s {deadline}; ray stop")
        grace = group["template"]["spec"]["terminationGracePeriodSeconds"]
        # Serve stops a replica at the deadline minus its drain timeout at the latest; the pod outlives both.
        assert longest_drain_s(config) < deadline < grace


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_the_head_and_batch_pods_keep_kuberays_probes_and_stop_ray(path: Path) -> None:
    rendered = render(load_config(path))
    batch = spec_of(rendered, "rayjob.yaml")
    for group in [spec_of(rendered, "rayservice.yaml")["headGroupSpec"], batch["headGroupSpec"],
                  *batch["workerGroupSpecs"]]:
        assert "readinessProbe" not in container(group)  # KubeRay then injects its own
        assert pre_stop(group) == "ray stop"
        assert "terminationGracePeriodSeconds" not in group["template"]["spec"]


def test_the_drain_deadline_follows_the_longest_drain_timeout() -> None:
    config = with_drains(load_config(REPO_ROOT / "configs" / "local-multi.yaml"), 30, 900.5)
    assert k8s_lifecycle.drain_deadline_s(config) == 901 + k8s_lifecycle.REPLACEMENT_WINDOW_S
    (group, *_) = spec_of(render(config), "rayservice.yaml")["workerGroupSpecs"]
    assert f"--deadline-s {901 + k8s_lifecycle.REPLACEMENT_WINDOW_S};" in pre_stop(group)
    assert group["template"]["spec"]["terminationGracePeriodSeconds"] == k8s_lifecycle.termination_grace_s(config)


def test_the_rendered_pre_stop_is_a_command_the_cli_takes() -> None:
    config = load_config(REPO_ROOT / "configs" / "production.yaml")
    drain, stop = k8s_lifecycle.drain_command(config).split("; ")
    args = shlex.split(drain.replace("${FQ_RAY_IP}", "head-svc"))
    assert args[:2] == ["llmcluster", "drain-node"] and stop == "ray stop"
    command = typer.main.get_command(app).commands["drain-node"]
    assert command.make_context("drain-node", args[2:]).params == {
        "dashboard": f"http://head-svc:{kuberay.DASHBOARD_PORT}", "deadline_s": k8s_lifecycle.drain_deadline_s(config),
        "node_id": None, "address": None}


def test_a_ready_path_behind_a_key_is_refused() -> None:
    config = load_config(REPO_ROOT / "configs" / "production.yaml")
    auth = config.router.auth.model_copy(update={"public_paths": ("/health", "/metrics")})
    locked = config.model_copy(update={"router": config.router.model_copy(update={"auth": auth})})
    with pytest.raises(ConfigError, match=r"router\.auth\.public_paths must include /ready"):
        render(locked)
