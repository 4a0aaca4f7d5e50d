"""The benchmark runner: systems one at a time, every run recorded, and every process it started stopped, also
when it is interrupted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from cluster.bench.processes import Child
from cluster.bench.report import Report
from cluster.bench.runner import Bench, BenchPlan, make_plan
from cluster.bench.servers import Kind, Server, System
from cluster.bench.workloads import Run, standard_workloads
from tests.processes import alive
from tests.unit.test_bench_report import VLLM_RESULT

# A parent that ignores SIGTERM with a child of its own: only the tree kill stops both.
STUBBORN_TREE = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)")


def stubborn(log: Path) -> Child:
    child = Child([sys.executable, "-c", STUBBORN_TREE], log)
    child.wait_until(lambda: len(child.tree()) == 2, 30, "the test tree")
    return child


def test_stop_kills_a_tree_that_ignores_sigterm(tmp_path: Path) -> None:
    child = stubborn(tmp_path / "tree.log")
    tree = child.tree()
    killed = child.stop(grace_s=0.5)
    assert len(killed) == 2
    assert not any(alive(proc) for proc in tree)


class FakeServers:
    """Starts each "server" as a real process tree, and notes what ran while which server was up."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.trees: list[list[psutil.Process]] = []
        self.events: list[str] = []

    def start(self, system: System, model: str, out: Path) -> Server:
        child = stubborn(self.folder / f"{system.label}.log")
        self.trees.append(child.tree())
        self.events.append(f"start {system.label}")

        class Stoppable(Server):
            def wait_ready(self, timeout_s: float = 0) -> None:
                pass

            def stop(inner) -> list[str]:
                self.events.append(f"stop {system.label}")
                return inner.child.stop(grace_s=0.5)

        return Stoppable(system, child, port=1)


def plan(tmp_path: Path, warmup: int = 0) -> BenchPlan:
    systems = [System("vllm", Kind.VLLM, Path("c.yaml")), System("llmcluster", Kind.LLMCLUSTER, Path("c.yaml"))]
    return make_plan(systems, "smollm2", "/models/smollm2", [standard_workloads()["random"]], [1, 4], repeats=2,
                     seed=10, prompts=None, warmup_prompts=warmup, out=tmp_path)


def test_each_system_runs_every_point_alone_and_the_results_are_saved_as_they_come(tmp_path: Path) -> None:
    servers, ran = FakeServers(tmp_path), []

    def client(server: Server, run: Run, _: BenchPlan) -> dict:
        ran.append((server.system.label, run.seed))
        servers.events.append(f"run {server.system.label}")
        return {**VLLM_RESULT, "output_throughput": float(run.concurrency)}

    bench = Bench(plan(tmp_path, warmup=8), Report({"systems": ["vllm", "llmcluster"]}), Console(quiet=True),
                  start=servers.start, client=client)
    report = bench.run()
    assert servers.events == ["start vllm", *["run vllm"] * 5, "stop vllm",
                              "start llmcluster", *["run llmcluster"] * 5, "stop llmcluster"]
    assert [seed for label, seed in ran if label == "vllm"] == [seed for label, seed in ran if label == "llmcluster"]
    assert len(report.results) == 8  # the warm-up is not recorded
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(p["system"], p["concurrency"], p["metrics"]["output_throughput"]) for p in saved["medians"]} == {
        ("vllm", 1, 1.0), ("vllm", 4, 4.0), ("llmcluster", 1, 1.0), ("llmcluster", 4, 4.0)}
    assert not any(alive(proc) for tree in servers.trees for proc in tree)


def test_an_interrupted_benchmark_stops_the_server_it_was_measuring(tmp_path: Path) -> None:
    servers = FakeServers(tmp_path)
    calls = []

    def client(server: Server, run: Run, _: BenchPlan) -> dict:
        calls.append(run)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return VLLM_RESULT

    bench = Bench(plan(tmp_path), Report({"systems": ["vllm", "llmcluster"]}), Console(quiet=True),
                  start=servers.start, client=client)
    with pytest.raises(KeyboardInterrupt):
        bench.run()
    assert servers.events == ["start vllm", "stop vllm"]
    assert len(bench.report.results) == 1
    assert not any(alive(proc) for proc in servers.trees[0])
