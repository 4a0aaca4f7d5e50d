"""Runs a benchmark: each system in turn (never two at once), warmed up, then every run of the plan."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cluster.bench.processes import Child, ProcessGoneError
from cluster.bench.report import THROUGHPUT, Report, RunResult, run_result
from cluster.bench.servers import Server, System, start_server
from cluster.bench.workloads import Run, client_args, plan_runs, warmup_run

# One client run: at most this long, however slow the machine; a hung server fails the benchmark instead.
RUN_TIMEOUT_S = 1800.0
CLIENT_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class BenchPlan:
    """What to measure: the systems in order (the first is the baseline), and the runs each gets."""

    systems: list[System]
    model: str  # the served model name requests carry
    tokenizer: str  # where the client finds the model's tokenizer (the resolved model source)
    runs: list[Run]
    warmup: Run | None
    seed: int  # the warm-up's; each run's is its own above it
    out: Path


def make_plan(systems: list[System], model: str, tokenizer: str, workloads: list[Any], concurrencies: list[int],
              repeats: int, seed: int, prompts: int | None, warmup_prompts: int, out: Path) -> BenchPlan:
    warmup = warmup_run(workloads, concurrencies, seed, warmup_prompts) if warmup_prompts else None
    return BenchPlan(systems, model, tokenizer, plan_runs(workloads, concurrencies, repeats, seed, prompts), warmup,
                     seed, out)


def run_client(server: Server, run: Run, plan: BenchPlan) -> dict[str, Any]:
    """`vllm bench serve` for `run` against `server`: vLLM's result JSON."""
    name = f"{server.system.label.replace(':', '-')}-{run.name}"
    result = plan.out / "runs" / f"{name}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "serve_app.vllm_adapter",
               *client_args(run, server.base_url, plan.model, plan.tokenizer, result)]
    child = Child(command, plan.out / "logs" / f"{name}.log")
    try:
        code = child.wait(RUN_TIMEOUT_S, f"vllm bench serve ({name})")
    finally:
        child.stop(CLIENT_STOP_GRACE_S)  # when interrupted or timed out; a finished client has nothing left
    if code != 0 or not result.exists():
        raise ProcessGoneError(f"vllm bench serve ({name}) exited with {code}:\n{child.log_tail()}")
    return json.loads(result.read_text())


StartServer = Callable[[System, str, Path], Server]
RunClient = Callable[[Server, Run, BenchPlan], dict[str, Any]]


class Bench:
    """Runs `plan`, adding each run's figures to `report` and saving it after each run."""

    def __init__(self, plan: BenchPlan, report: Report, console: Console,
                 start: StartServer = start_server, client: RunClient = run_client) -> None:
        self.plan, self.report, self.console = plan, report, console
        self._start, self._client = start, client
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        steps_per_system = len(plan.runs) + 1 + (plan.warmup is not None)
        self._task = self._progress.add_task("", total=len(plan.systems) * steps_per_system)

    def run(self) -> Report:
        with self._progress:
            for system in self.plan.systems:
                self._measure(system)
        return self.report

    def _measure(self, system: System) -> None:
        self._step(f"{system.label}: starting the server", advance=0)
        server = self._start(system, self.plan.model, self.plan.out)
        try:
            server.wait_ready()
            self._step(f"{system.label}: ready on {server.base_url}")
            if self.plan.warmup is not None:
                self._step(f"{system.label}: warm-up ({self.plan.warmup.prompts} prompts)", advance=0)
                self._client(server, self.plan.warmup, self.plan)
                self._step(f"{system.label}: warmed up")
            for run in self.plan.runs:
                self._step(f"{system.label}: {run.workload.name} at concurrency {run.concurrency}, "
                           f"run {run.repeat} ({run.prompts} prompts)", advance=0)
                self._record(system, run, self._client(server, run, self.plan))
        finally:
            self._step(f"{system.label}: stopping the server", advance=0)
            killed = server.stop()
            if killed:
                self.console.print(f"[yellow]{system.label}: killed what did not stop in time: {killed}")

    def _record(self, system: System, run: Run, result: dict[str, Any]) -> None:
        figures: RunResult = run_result(system.label, run.workload.name, run.concurrency, run.repeat, run.seed,
                                        result)
        self.report.results.append(figures)
        self.save()
        m = figures.metrics
        failed = f", [red]{figures.failed} failed[/red]" if figures.failed else ""
        self._step(f"{system.label}: {run.workload.name} c={run.concurrency} #{run.repeat}: "
                   f"{m.get(THROUGHPUT, 0):.1f} tok/s, TTFT p50 {m.get('p50_ttft_ms', 0):.0f} ms, "
                   f"ITL p50 {m.get('p50_itl_ms', 0):.1f} ms, p99 {m.get('p99_itl_ms', 0):.0f} ms{failed}",
                   log=True)

    def save(self) -> Path:
        path = self.plan.out / "results.json"
        path.write_text(json.dumps(self.report.to_json(), indent=2) + "\n")
        return path

    def _step(self, description: str, advance: int = 1, log: bool = False) -> None:
        if log:
            self._progress.console.print(description, highlight=False, soft_wrap=True)
        self._progress.update(self._task, description=description, advance=advance)
