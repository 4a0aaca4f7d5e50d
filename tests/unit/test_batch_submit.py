"""Submitting a batch job to Kubernetes: the rendered RayJob, set to the job's model and files, created once."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from cluster.batch import BatchError
from cluster.batch.submit import batch_rayjob, follow_hint, submit_rayjob
from cluster.k8s_render import render
from serve_app.config import load_config
from tests.conftest import REPO_ROOT
from tests.k8s_schemas import ManifestChecker, needs_crds

MULTI = REPO_ROOT / "configs" / "local-multi.yaml"


class FakeCustomObjects:
    """Records what a CustomObjectsApi would have sent to the API server."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str, str, str, dict[str, Any]]] = []

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((group, version, namespace, plural, body))
        return {**body, "metadata": {**body["metadata"], "uid": "1234"}}


def entrypoint_args(job: dict[str, Any]) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


def test_the_job_runs_the_chosen_model_on_its_files() -> None:
    config = load_config(MULTI)
    second = config.models[1]
    job = batch_rayjob(config, second.name, "/models/in/x.jsonl", "/models/out/x.jsonl", name="demo-batch-1")
    args = entrypoint_args(job)
    assert args[:2] == ["llmcluster", "batch"]
    assert args[args.index("--model") + 1] == second.name
    assert args[args.index("--input") + 1] == "/models/in/x.jsonl"
    assert args[args.index("--output") + 1] == "/models/out/x.jsonl"
    assert job["metadata"]["name"] == "demo-batch-1" and job["spec"]["suspend"] is False


def test_the_job_is_the_rendered_one_apart_from_what_the_submission_sets() -> None:
    config = load_config(MULTI)
    model = config.models[0].name
    rendered = render(config)["rayjob.yaml"]
    batch = config.kubernetes.batch
    job = batch_rayjob(config, model, batch.input, batch.output, name="other")
    assert job["spec"]["rayClusterSpec"] == rendered["spec"]["rayClusterSpec"]
    assert job["spec"]["entrypoint"] == rendered["spec"]["entrypoint"]
    assert job["metadata"]["name"] != rendered["metadata"]["name"] and rendered["spec"]["suspend"] is True


@needs_crds
def test_the_submitted_job_is_a_valid_rayjob() -> None:
    config = load_config(MULTI)
    job = batch_rayjob(config, config.models[-1].name, "/models/a.jsonl", "/models/b.jsonl")
    assert ManifestChecker.load().errors(job) == []


def test_submit_creates_one_rayjob_in_the_config_namespace() -> None:
    config = load_config(MULTI)
    job = batch_rayjob(config, config.models[0].name, "/models/a.jsonl", "/models/b.jsonl", name="j1")
    api = FakeCustomObjects()
    assert submit_rayjob(api, job) == "j1"
    assert api.created == [("ray.io", "v1", config.kubernetes.namespace, "rayjobs", job)]
    assert f"kubectl -n {config.kubernetes.namespace} get rayjob j1 -w" in "\n".join(follow_hint(job))


def test_an_unknown_model_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(BatchError, match="its models"):
        batch_rayjob(load_config(MULTI), "gpt-5", "/a", "/b")
