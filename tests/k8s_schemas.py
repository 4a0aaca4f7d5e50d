"""Checks Kubernetes manifests offline: CRD schemas as strict JSON Schema, core kinds with kubernetes-validate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import SHARED_DIR, TESTS_DIR

KUBERAY_CRDS = SHARED_DIR / "kuberay" / "crds"
needs_crds = pytest.mark.skipif(
    not KUBERAY_CRDS.is_dir(),
    reason=f"the KubeRay CRDs are not at {KUBERAY_CRDS}: ../shared is missing (a fresh clone); CI has it")
VENDORED = TESTS_DIR / "schemas"
KUSTOMIZATION_SCHEMA = VENDORED / "kustomization.schema.yaml"
# The oldest Kubernetes the manifests target: a field added after it is rejected. Pinned, so a
# kubernetes-validate upgrade cannot change what passes without a change here.
KUBERNETES_VERSION = "1.33.0"
INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}
MESSAGE_LIMIT = 300


def crd_files() -> list[Path]:
    return [*sorted(KUBERAY_CRDS.glob("*.yaml")), *sorted(VENDORED.glob("monitoring.coreos.com_*.yaml"))]


def load_yaml_documents(path: Path) -> list[Any]:
    # libyaml's loader: the KubeRay CRDs are 60,000 lines and the pure-Python loader takes seconds.
    with path.open() as stream:
        return [doc for doc in yaml.load_all(stream, Loader=yaml.CSafeLoader) if doc is not None]


def crd_to_json_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema that, like the API server with pruning, rejects unknown fields."""
    if isinstance(node, list):
        return [crd_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            schema[key] = {name: crd_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf") and not isinstance(
                value, bool):
            schema[key] = crd_to_json_schema(value)
        elif not key.startswith("x-kubernetes-") and key not in ("description", "nullable", "default"):
            schema[key] = value
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("format") == "int32" and schema.get("type") == "integer":
        schema = {**INT32, **schema}
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    preserves = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not preserves and "additionalProperties" not in node:
        schema["additionalProperties"] = False
    return schema


@dataclass(frozen=True)
class ManifestChecker:
    """Validates one manifest document; `errors` is empty when the API server would accept its shape."""

    crd_schemas: dict[tuple[str, str], dict[str, Any]]
    kustomization_schema: dict[str, Any]

    @classmethod
    def load(cls) -> ManifestChecker:
        schemas = {}
        for path in crd_files():
            for crd in load_yaml_documents(path):
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = crd_to_json_schema(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{group}/{version['name']}", kind)] = schema
        return cls(schemas, yaml.safe_load(KUSTOMIZATION_SCHEMA.read_text()))

    def errors(self, doc: Any) -> list[str]:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            return ["not a Kubernetes object: apiVersion and kind are required"]
        key = (doc["apiVersion"], doc["kind"])
        if key == ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
            return _json_schema_errors(self.kustomization_schema, doc)
        if key in self.crd_schemas:
            return [*_json_schema_errors(self.crd_schemas[key], doc), *_core_errors(_as_config_map(doc)),
                    *(error for template in pod_templates(doc) for error in _core_errors(_as_pod_template(template)))]
        return _core_errors(doc)


def _json_schema_errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [_short(f"{_path(error)}: {error.message}") for error in validator.iter_errors(doc)]


def _core_errors(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {doc.get('kind')} ({doc.get('apiVersion')}): not a core kind of Kubernetes "
                f"{KUBERNETES_VERSION}; vendor its CRD under tests/schemas/"]
    except kubernetes_validate.ValidationError as error:
        return [_short(f"{doc.get('kind')} {'.'.join(str(p) for p in error.path) or '(top)'}: {error.message}")]
    return []


def _as_config_map(doc: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap carrying `doc`'s metadata: CRDs type metadata as any object, the core schema checks it."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}


def _as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"}, "template": template}


def pod_templates(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod templates inside a RayService or RayJob, checked again by the core PodTemplate schema."""
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or {}
    groups = [cluster.get("headGroupSpec", {}), *cluster.get("workerGroupSpecs", [])]
    yield from (group["template"] for group in groups if isinstance(group, dict) and "template" in group)


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top)"


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT] + " ..."
