"""The engine seam: vLLM's adapter and the shared fakes implement `Engine`, and nothing else touches vLLM."""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
from pathlib import Path
from typing import Any

import pytest

from cluster.batch.engine_stage import EngineStage
from serve_app.config import ModelConfig
from serve_app.engine_protocol import Endpoint, Engine, EngineReply, EngineSpec, answer
from serve_app.llm_server import engine_spec
from serve_app.vllm_adapter import CPU_BINDING_ENV, VLLMEngine, cpu_binding_env
from tests.batch_fakes import FakeBatchEngine
from tests.engine_fakes import FakeServingEngine

REPO_ROOT = Path(__file__).resolve().parents[2]
ADAPTER = REPO_ROOT / "serve_app" / "vllm_adapter.py"
# An environment variable of vLLM's, written out in full: a knob that belongs in the adapter.
VLLM_ENV_NAME = re.compile(r"VLLM_[A-Z0-9_]+")


def protocol_members(protocol: type) -> dict[str, Any]:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, (property, classmethod)))}


def departures(cls: type, protocol: type = Engine) -> list[str]:
    """How `cls` departs from `protocol`: missing members, and methods of another kind or parameter names."""
    problems = []
    for name, member in protocol_members(protocol).items():
        if not hasattr(cls, name):
            problems.append(f"{name} is missing")
        elif isinstance(member, property):
            continue  # a property or a plain attribute both read as a value
        elif isinstance(member, classmethod):
            if not isinstance(inspect.getattr_static(cls, name), classmethod):
                problems.append(f"{name} is not a classmethod")
            elif _shape(member.__func__) != _shape(getattr(cls, name).__func__):
                problems.append(f"{name} differs from the protocol: {_shape(getattr(cls, name).__func__)}")
        elif _shape(member) != _shape(getattr(cls, name)):
            problems.append(f"{name} differs from the protocol: {_shape(getattr(cls, name))}")
    return problems


def _shape(function: Any) -> tuple[bool, list[str]]:
    return inspect.iscoroutinefunction(function), list(inspect.signature(function).parameters)


@pytest.mark.parametrize("cls", [VLLMEngine, FakeServingEngine, FakeBatchEngine], ids=lambda cls: cls.__name__)
def test_every_engine_implements_the_protocol(cls: type) -> None:
    assert departures(cls) == []


def test_the_conformance_check_notices_a_departure() -> None:
    class Partial(FakeServingEngine):
        def check_health(self) -> None:  # not a coroutine any more
            pass

    new = [problem for problem in departures(Partial) if problem not in departures(FakeServingEngine)]
    assert new == ["check_health differs from the protocol: (False, ['self'])"]
    assert departures(type("Bare", (), {})) == [f"{name} is missing" for name in protocol_members(Engine)]


def python_sources() -> list[Path]:
    return sorted(p for folder in ("serve_app", "cluster") for p in (REPO_ROOT / folder).rglob("*.py"))


def vllm_imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [name for name in names if name == "vllm" or name.startswith("vllm.")]


def test_only_the_adapter_imports_vllm() -> None:
    offenders = {str(path.relative_to(REPO_ROOT)): vllm_imports(ast.parse(path.read_text()))
                 for path in python_sources() if path != ADAPTER}
    assert {path: names for path, names in offenders.items() if names} == {}
    assert vllm_imports(ast.parse(ADAPTER.read_text()))  # the scan does find imports where they are


def test_only_the_adapter_names_vllm_environment_variables() -> None:
    def env_names(path: Path) -> list[str]:
        return [node.value for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and VLLM_ENV_NAME.fullmatch(node.value)]

    offenders = {str(path.relative_to(REPO_ROOT)): env_names(path) for path in python_sources() if path != ADAPTER}
    assert {path: names for path, names in offenders.items() if names} == {}
    assert CPU_BINDING_ENV in env_names(ADAPTER)


def cpu_model(tensor: int = 2, pipeline: int = 1, cpus_per_worker: float = 1) -> ModelConfig:
    return ModelConfig.model_validate({
        "name": "m", "source": "/models/m", "parallelism": {"tensor": tensor, "pipeline": pipeline},
        "resources": {"device": "cpu", "cpus_per_worker": cpus_per_worker}})


def test_a_cpu_replica_of_several_ranks_binds_each_to_its_own_cores() -> None:
    spec = engine_spec(cpu_model(tensor=2, cpus_per_worker=2), "/m", allowed_cores=[2, 3, 4, 5, 6])
    assert (spec.rank_cores, spec.distributed_backend) == (((2, 3), (4, 5)), "mp")
    assert cpu_binding_env(spec) == {CPU_BINDING_ENV: "2,3|4,5"}


def test_one_rank_and_gpu_replicas_leave_binding_to_the_engine() -> None:
    gpu = ModelConfig.model_validate({"name": "g", "source": "org/g", "parallelism": {"tensor": 8},
                                      "resources": {"device": "gpu"}})
    for spec in (engine_spec(cpu_model(tensor=1), "/m"), engine_spec(gpu, "/g")):
        assert spec.rank_cores == () and cpu_binding_env(spec) == {}
    assert engine_spec(gpu, "/g").distributed_backend == "ray"


class RecordingEngine(FakeBatchEngine):
    specs: list[EngineSpec] = []

    @classmethod
    async def start(cls, spec: EngineSpec, placement_group: Any = None) -> RecordingEngine:
        cls.specs.append(spec)
        return await super().start(spec, placement_group)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a tensor-parallel 2 spec needs 2 cores to bind")
def test_the_batch_engine_stage_binds_cpu_ranks_as_the_replica_does(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.util

    # Outside an actor Ray's lookup of the current placement group would start a local Ray cluster.
    monkeypatch.setattr(ray.util, "get_current_placement_group", lambda: None)
    model = cpu_model(tensor=2).model_copy(update={"source": str(tmp_path)})
    stage = EngineStage(model, engine_cls=RecordingEngine)
    try:
        assert RecordingEngine.specs == [engine_spec(model, str(tmp_path))]
        assert len(set(RecordingEngine.specs[0].rank_cores)) == 2
    finally:
        del stage


class MethodRecorder:
    """Any engine method: records the name it was called by."""

    called: str | None = None

    def __getattr__(self, name: str) -> Any:
        async def method(body: dict[str, Any], request_id: str) -> EngineReply:
            self.called = name
            return EngineReply(200, {"request_id": request_id})

        return method


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_answer_calls_the_engine_method_named_after_the_endpoint(endpoint: Endpoint) -> None:
    engine = MethodRecorder()
    reply = asyncio.run(answer(engine, Endpoint(endpoint.value), {"model": "m"}, "r1"))  # type: ignore[arg-type]
    assert (engine.called, reply.body) == (endpoint.value, {"request_id": "r1"})
