"""`llmcluster render k8s`, `plan` and `batch --kubernetes` work with only the runtime dependencies installed.

How, and why this way: a fresh virtual environment with `pip install .` would take minutes (Ray, pyarrow and
friends; the cpu or gpu extra adds vLLM and torch) and fetch from PyPI every run. The commands' need, though, is
only that nothing they import comes from outside `[project] dependencies`. So the test runs the installed
`llmcluster` with every other distribution hidden: a sitecustomize refuses any module whose file belongs to a
distribution outside the closure of those requirements, which the test reads from pyproject.toml and follows
through the installed packages' own metadata (with the extras each requirement names). Hidden are the dev extra
(pytest, kubernetes-validate, ...) and also the cpu and gpu extras (vLLM, torch, transformers): what runs here
runs after `pip install .[cpu]` or `.[gpu]`, which only add to it. A requirement moved into `dev`, or a command
that starts importing a dev-only package or vLLM, fails here. Not proven: that pip resolves the versions (the
dev install resolves the same requirements, and tests/unit/test_pins.py checks the pins).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.model_configs import DEEPSEEK_V3

REPO_ROOT = Path(__file__).resolve().parents[2]
LLMCLUSTER = Path(sys.executable).with_name("llmcluster")
# Distributions an install has whatever its requirements: the project itself and the installer.
ALWAYS_THERE = {"llmcluster", "pip", "setuptools"}

HIDING_SITECUSTOMIZE = '''
import json, os, sys

_OWNER = json.loads(open(os.environ["LLMCLUSTER_HIDDEN_FILES"]).read())


class _HideUninstalled:
    """Finds a module as the other finders do, and refuses it when its file belongs to a hidden distribution."""

    def find_spec(self, fullname, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            owner = _OWNER.get(spec.origin) if spec.origin else None
            if owner:
                raise ModuleNotFoundError(f"No module named {fullname!r} ({owner} is not a runtime dependency)",
                                          name=fullname)
            return spec
        return None


sys.meta_path.insert(0, _HideUninstalled())
'''


def runtime_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` bring in, followed through installed metadata with the extras asked."""
    extras: dict[str, set[str]] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in extras and set(requirement.extras) <= extras[name]:
            continue
        extras.setdefault(name, set()).update(requirement.extras)
        try:
            needs = distribution(name).requires or []
        except PackageNotFoundError:  # a requirement whose marker excludes this platform
            continue
        for text in needs:
            need = Requirement(text)
            if need.marker is None or any(need.marker.evaluate({"extra": extra}) for extra in extras[name] | {""}):
                pending.append(need)
    return set(extras)


@pytest.fixture(scope="module")
def runtime_only_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which the venv's Python sees only the runtime dependencies of llmcluster."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    keep = runtime_closure(project["dependencies"]) | ALWAYS_THERE
    owner = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if canonicalize_name(name) not in keep:
            owner.update({str(dist.locate_file(file)): name for file in dist.files or []
                          if file.suffix in (".py", ".so", ".pyc")})
    folder = tmp_path_factory.mktemp("runtime-only")
    (folder / "hidden.json").write_text(json.dumps(owner))
    (folder / "sitecustomize.py").write_text(HIDING_SITECUSTOMIZE)
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBERNETES_SERVICE")}
    return env | {"PYTHONPATH": str(folder), "LLMCLUSTER_HIDDEN_FILES": str(folder / "hidden.json"),
                  "KUBECONFIG": str(folder / "no-kubeconfig")}


def llmcluster(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LLMCLUSTER), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)


def test_the_view_hides_dev_only_and_engine_packages(runtime_only_env: dict[str, str]) -> None:
    for module in ("pytest", "kubernetes_validate", "vllm", "torch"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=runtime_only_env,
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 1 and "is not a runtime dependency" in probe.stderr, (module, probe.stderr)


def test_render_k8s_writes_the_committed_manifests(runtime_only_env: dict[str, str], tmp_path: Path) -> None:
    result = llmcluster(runtime_only_env, "render", "k8s", "configs/production.yaml", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    committed = REPO_ROOT / "k8s" / "production"
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {p.name: p.read_text() for p in committed.iterdir()}


def test_plan_sizes_a_model(runtime_only_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(DEEPSEEK_V3))
    result = llmcluster(runtime_only_env, "plan", str(tmp_path / "config.json"), "--json")
    assert result.returncode == 0, result.stderr
    layout = json.loads(result.stdout)["layout"]
    assert (layout["tensor"], layout["pipeline"], layout["nodes"]) == (8, 2, 2)


def test_batch_on_kubernetes_gets_as_far_as_the_credentials(runtime_only_env: dict[str, str]) -> None:
    result = llmcluster(runtime_only_env, "batch", "configs/local.yaml", "--model", "smollm2", "--input",
                        "/data/requests.jsonl", "--output", "/data/answers.jsonl", "--kubernetes")
    assert result.returncode == 2 and "no Kubernetes credentials" in result.stdout + result.stderr, result.stderr
