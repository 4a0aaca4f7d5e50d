"""The benchmark's results: medians over repeats, every system against the first, as JSON and Markdown."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.bench.workloads import LATENCY_METRICS, PERCENTILES

THROUGHPUT = "output_throughput"
# The figures kept from each of vLLM's result files (the rest is per-request detail or settings).
KEPT_METRICS = ("output_throughput", "request_throughput", "total_token_throughput", "duration",
                *(f"mean_{metric}_ms" for metric in LATENCY_METRICS),
                *(f"p{p}_{metric}_ms" for metric in LATENCY_METRICS for p in PERCENTILES))


@dataclass(frozen=True)
class RunResult:
    """One client run's figures, as `vllm bench serve` measured them."""

    system: str
    workload: str
    concurrency: int
    repeat: int
    seed: int
    completed: int
    failed: int
    metrics: dict[str, float]


def run_result(system: str, workload: str, concurrency: int, repeat: int, seed: int,
               result: dict[str, Any]) -> RunResult:
    """The figures of one of vLLM's result files (`--save-result`)."""
    metrics = {name: float(result[name]) for name in KEPT_METRICS if result.get(name) is not None}
    return RunResult(system, workload, concurrency, repeat, seed, int(result.get("completed", 0)),
                     int(result.get("failed", 0)), metrics)


@dataclass(frozen=True)
class Point:
    """One system at one workload and concurrency: the median of each figure over its repeats."""

    system: str
    workload: str
    concurrency: int
    repeats: int
    failed: int
    metrics: dict[str, float]

    def get(self, name: str) -> float | None:
        return self.metrics.get(name)


def points(results: list[RunResult]) -> list[Point]:
    """Medians over the repeats of each (system, workload, concurrency), in the order first run."""
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.system, result.workload, result.concurrency), []).append(result)
    found = []
    for (system, workload, concurrency), runs in groups.items():
        names = {name for run in runs for name in run.metrics}
        medians = {name: statistics.median(run.metrics[name] for run in runs if name in run.metrics)
                   for name in sorted(names)}
        found.append(Point(system, workload, concurrency, len(runs), sum(run.failed for run in runs), medians))
    return found


@dataclass(frozen=True)
class Comparison:
    """`system` against `baseline` at one point: the figures the targets are stated in."""

    baseline: str
    system: str
    workload: str
    concurrency: int
    throughput_ratio: float | None  # output tokens/s, system / baseline
    ttft_p50_diff_ms: float | None  # system - baseline
    itl_p50_ratio: float | None  # system / baseline
    itl_p99_ms: tuple[float | None, float | None]  # baseline, system


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def difference(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def compare(found: list[Point], baseline: str) -> list[Comparison]:
    """Each other system's points against the baseline's point of the same workload and concurrency."""
    base = {(p.workload, p.concurrency): p for p in found if p.system == baseline}
    comparisons = []
    for point in found:
        ref = base.get((point.workload, point.concurrency))
        if point.system == baseline or ref is None:
            continue
        comparisons.append(Comparison(
            baseline, point.system, point.workload, point.concurrency,
            throughput_ratio=ratio(point.get(THROUGHPUT), ref.get(THROUGHPUT)),
            ttft_p50_diff_ms=difference(point.get("p50_ttft_ms"), ref.get("p50_ttft_ms")),
            itl_p50_ratio=ratio(point.get("p50_itl_ms"), ref.get("p50_itl_ms")),
            itl_p99_ms=(ref.get("p99_itl_ms"), point.get("p99_itl_ms"))))
    return comparisons


@dataclass
class Report:
    """A whole benchmark: what ran where (`meta`: systems, workloads, machine, ...) and every run's figures."""

    meta: dict[str, Any]
    results: list[RunResult] = field(default_factory=list)

    @property
    def systems(self) -> list[str]:
        return list(self.meta["systems"])

    @property
    def points(self) -> list[Point]:
        return points(self.results)

    @property
    def comparisons(self) -> list[Comparison]:
        return compare(self.points, self.systems[0])

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "medians": [asdict(p) for p in self.points],
                "comparisons": [asdict(c) for c in self.comparisons], "runs": [asdict(r) for r in self.results]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        return cls(data["meta"], [RunResult(**run) for run in data["runs"]])
