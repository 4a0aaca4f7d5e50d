"""A simulated GPU cluster on one machine: Ray nodes shaped like the worker groups of a rendered RayService
(GPUs, CPUs and the accelerator and node-pool resources they declare), with the real Serve application of a
config deployed on them behind an injected engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import yaml
from ray.cluster_utils import Cluster

from serve_app.builder import build_application
from serve_app.config import ClusterConfig
from tests.conftest import REPO_ROOT
from tests.placement_fakes import HOLD_PREFIX

# Ray's floor; the simulated nodes pass no objects worth the name.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
# Every Ray process of the cluster gets these. Serve reports load every 10 s by default; 1 s lets a test see an
# autoscaling decision within seconds. The hub stays offline: nothing here may fetch weights.
NODE_ENV = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
            "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1", "HF_HUB_OFFLINE": "1"}
T = TypeVar("T")


@dataclass(frozen=True)
class NodeShape:
    """What Ray on one pod of a group declares: the container's CPUs and GPUs, and rayStartParams resources."""

    cpus: float
    gpus: int
    resources: dict[str, float] = field(default_factory=dict)

    def node_args(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus, "resources": dict(self.resources),
                "object_store_memory": OBJECT_STORE_BYTES, "env_vars": dict(NODE_ENV)}


@dataclass(frozen=True)
class RenderedCluster:
    """The head and worker groups of k8s/<name>/rayservice.yaml: groups by name, with their initial pod counts."""

    head: NodeShape
    groups: dict[str, NodeShape]
    initial_nodes: dict[str, int]


def rendered_cluster(name: str) -> RenderedCluster:
    service = yaml.safe_load((REPO_ROOT / "k8s" / name / "rayservice.yaml").read_text())
    spec = service["spec"]["rayClusterConfig"]
    head = spec["headGroupSpec"]["rayStartParams"]
    groups, initial = {}, {}
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        # The param is a JSON object inside a quoted string, as KubeRay passes it to `ray start --resources`.
        resources = json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))
        groups[group["groupName"]] = NodeShape(float(limits["cpu"]), int(limits.get("nvidia.com/gpu", 0)),
                                               resources)
        initial[group["groupName"]] = group["replicas"]
    return RenderedCluster(NodeShape(float(head["num-cpus"]), int(head["num-gpus"])), groups, initial)


class SimulatedCluster:
    """A Ray cluster of simulated nodes this process is connected to, with Serve started on its head only
    (every node shares this machine's address, so only one HTTP proxy can have the port)."""

    def __init__(self, head: NodeShape, port: int) -> None:
        import ray
        from ray import serve

        self.cluster = Cluster(initialize_head=True, head_node_args={**head.node_args(), "include_dashboard": False})
        self.nodes: dict[str, list[Any]] = {}  # group label -> its Ray nodes, in the order they joined
        ray.init(address=self.cluster.address, log_to_driver=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def add(self, label: str, shape: NodeShape, count: int = 1) -> list[str]:
        """Start `count` nodes of `shape` under `label`; their node ids."""
        added = [self.cluster.add_node(**shape.node_args()) for _ in range(count)]
        self.cluster.wait_for_nodes()
        self.nodes.setdefault(label, []).extend(added)
        return [node.node_id for node in added]

    def remove(self, label: str) -> None:
        for node in self.nodes.pop(label, []):
            self.cluster.remove_node(node)

    def node_ids(self, label: str) -> set[str]:
        return {node.node_id for node in self.nodes.get(label, [])}

    def deploy(self, config: ClusterConfig, engine_cls: type) -> None:
        """Deploy `config` as `llmcluster serve` does, with `engine_cls`; returns before its models run."""
        from ray import serve

        target = serve.RunTarget(build_application(config, engine_cls=engine_cls), name=config.cluster.name,
                                 route_prefix="/")
        serve.run_many([target], wait_for_applications_running=False)

    @staticmethod
    def remove_apps() -> None:
        """Delete every Serve application, waiting until their replicas are gone."""
        from ray import serve

        for app in serve.status().applications:
            serve.delete(app)

    def shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        self.cluster.shutdown()


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
    """The first truthy answer of `probe`; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(every_s)


class HeldLoad:
    """`count` completions held open at once through the router (each for `hold_s`), from a thread of its own.

    The prompt asks the placement engine (tests/placement_fakes.py) to hold each request."""

    def __init__(self, url: str, model: str, count: int, hold_s: float) -> None:
        self._url, self._count = f"{url}/v1/completions", count
        self._body = {"model": model, "prompt": f"{HOLD_PREFIX}{hold_s:g}", "max_tokens": 1}
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> HeldLoad:
        import threading

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._task = asyncio.run_coroutine_threadsafe(self._started(), self._loop).result(10)
        return self

    async def _started(self) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        limits = httpx.Limits(max_connections=self._count, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            await asyncio.gather(*(self._send(client) for _ in range(self._count)))

    async def _send(self, client: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await client.post(self._url, json=self._body)

    def __exit__(self, *_: object) -> None:
        async def cancel() -> None:  # closing the connections aborts the requests, as a leaving client does
            assert self._task is not None
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
