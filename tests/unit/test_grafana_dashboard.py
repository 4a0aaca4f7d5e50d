"""The Grafana dashboard queries only metrics and labels the code exports: the router's and the installed vLLM's."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cluster.k8s_dashboard import DASHBOARD_FILE
from serve_app.metrics import MetricsHub, QueueDepth, RouterMetrics
from serve_app.metrics.hub_link import HubLink

REQUIRED_ENGINE_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                           "vllm:time_to_first_token_seconds_bucket")
# Labels every `vllm:` sample has: vLLM's own two, and the two the engine replica adds (hub_deployment.py).
ENGINE_LABELS = frozenset({"model_name", "engine", "model", "replica"})
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def router_exports() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from a router replica's /metrics text after one request of each kind."""
    async def text() -> str:
        hub = MetricsHub({"model-m": "m"})
        hub.record_replicas({"model-m": {"RUNNING": 1}})
        metrics = RouterMetrics(lambda: [QueueDepth("m", 1, 1)], replica="r", hub=HubLink(hub, "router/r"))
        observation = metrics.request("m", "team")
        observation.token()
        observation.token()
        observation.retried()
        observation.failed_over()
        observation.finished(200, 1, 1)
        return (await metrics.exposition()).decode()

    exports: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(asyncio.run(text())):
        for sample in family.samples:
            exports.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in exports.items()}


@cache
def vllm_exports() -> dict[str, frozenset[str]]:
    """The sample names of vLLM's PrometheusStatLogger, read from the installed vLLM's source (importing vLLM
    takes seconds and building its logger needs a whole engine config)."""
    spec = find_spec("vllm")
    assert spec is not None and spec.origin, "vLLM is not installed"
    source = Path(spec.origin).parent / "v1" / "metrics" / "loggers.py"
    exports = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = node.func.attr.strip("_").removesuffix("_cls")
        name = next((k.value.value for k in node.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)),
                    None)
        if kind in SAMPLE_SUFFIXES and isinstance(name, str):
            histogram = kind == "histogram"
            for suffix in SAMPLE_SUFFIXES[kind]:
                exports[name + suffix] = ENGINE_LABELS | ({"le"} if histogram and suffix == "_bucket" else set())
    return exports


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def queries(board: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def selectors(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects, and the label names it matches on or groups by."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", bare))
    names |= set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", bare))
    labels = {label for inside in re.findall(r"\{([^}]*)\}", bare)
              for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", inside)}
    labels |= {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", bare)
               for label in group.split(",") if label.strip()}
    labels |= set(re.findall(r"label_values\([^,]+,\s*([A-Za-z_][A-Za-z0-9_]*)", bare))
    return names, labels


def test_the_installed_vllm_exports_the_engine_metrics_the_docs_name() -> None:
    assert set(REQUIRED_ENGINE_METRICS) <= set(vllm_exports())


def test_every_query_names_only_exported_metrics_and_their_labels() -> None:
    exported = {**vllm_exports(), **router_exports()}
    for expr in queries(dashboard()):
        names, labels = selectors(expr)
        assert names, f"no metric found in {expr!r}: write selectors as name{{...}}"
        unknown = names - set(exported)
        assert not unknown, f"{expr!r} queries {sorted(unknown)}, which nothing exports"
        known_labels = set().union(*(exported[name] for name in names))
        assert labels <= known_labels, f"{expr!r} uses labels {sorted(labels - known_labels)} its metrics lack"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    everything = " ".join(queries(dashboard()))
    for needed in ("llmcluster_requests_total", "llmcluster_request_duration_seconds_bucket",
                   "llmcluster_time_to_first_token_seconds_bucket", "llmcluster_inter_token_latency_seconds_bucket",
                   "llmcluster_completion_tokens_total", "llmcluster_replicas", "vllm:kv_cache_usage_perc",
                   "llmcluster_requests_queued", "vllm:num_requests_waiting", "llmcluster_failovers_total"):
        assert needed in everything, needed


def test_the_check_catches_a_misspelt_metric_and_a_missing_label() -> None:
    exported = {**vllm_exports(), **router_exports()}
    names, _ = selectors('sum(rate(llmcluster_request_total{model=~"$model"}[5m]))')
    assert names - set(exported) == {"llmcluster_request_total"}
    _, labels = selectors('sum by (tenant) (rate(llmcluster_requests_total{model="x"}[5m]))')
    assert labels - exported["llmcluster_requests_total"] == {"tenant"}
