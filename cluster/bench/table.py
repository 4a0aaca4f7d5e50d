"""The benchmark report as Markdown: per workload, every system against the first, then each system's medians."""

from __future__ import annotations

from cluster.bench.report import THROUGHPUT, Comparison, Point, Report


def number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def signed_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f} ms"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"x{value:.2f}"


def arrow(before: float | None, after: float | None, digits: int = 1) -> str:
    return f"{number(before, digits)} → {number(after, digits)}"


def markdown(report: Report) -> str:
    meta = report.meta
    lines = [f"# llmcluster bench: {meta.get('model', '?')} on {meta.get('machine', {}).get('summary', '?')}", "",
             f"{meta.get('date', '')}; systems: {', '.join(report.systems)}; medians of "
             f"{meta.get('repeats', '?')} runs per point; engine arguments: `{meta.get('engine_args', {})}`.", ""]
    points, comparisons = report.points, report.comparisons
    for name, workload in meta.get("workloads", {}).items():
        lines += [f"## {name}: {workload.get('description', '')}", ""]
        lines += comparison_table([c for c in comparisons if c.workload == name], report.systems[0], points)
        lines += medians_table([p for p in points if p.workload == name])
    failed = sum(p.failed for p in points)
    if failed:
        lines += [f"**{failed} requests failed**: see the client logs; their points are not comparable.", ""]
    return "\n".join(lines)


def comparison_table(comparisons: list[Comparison], baseline: str, points: list[Point]) -> list[str]:
    if not comparisons:
        return []
    by_key = {(p.system, p.workload, p.concurrency): p for p in points}
    several = len({c.system for c in comparisons}) > 1
    head = ["concurrency", *(["system"] if several else []), f"output tok/s ({baseline} → system)",
            "ratio", "TTFT p50 (ms)", "TTFT p50 diff", "ITL p50 (ms)", "ITL p50 ratio", "ITL p99 (ms)"]
    lines = [f"System against {baseline}" + ("" if several else f" ({comparisons[0].system})") + ":", "",
             _row(head), _row(["---"] * len(head))]
    for c in comparisons:
        base, mine = by_key[(baseline, c.workload, c.concurrency)], by_key[(c.system, c.workload, c.concurrency)]
        lines.append(_row([
            str(c.concurrency), *([c.system] if several else []),
            arrow(base.get(THROUGHPUT), mine.get(THROUGHPUT)), number(c.throughput_ratio, 2),
            arrow(base.get("p50_ttft_ms"), mine.get("p50_ttft_ms"), 0), signed_ms(c.ttft_p50_diff_ms),
            arrow(base.get("p50_itl_ms"), mine.get("p50_itl_ms")), times(c.itl_p50_ratio),
            arrow(*c.itl_p99_ms, digits=0)]))
    return [*lines, ""]


def medians_table(points: list[Point]) -> list[str]:
    head = ["system", "concurrency", "output tok/s", "req/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
            "E2E p50", "runs", "failed"]
    lines = ["Medians (latencies in ms):", "", _row(head), _row(["---"] * len(head))]
    for p in points:
        lines.append(_row([p.system, str(p.concurrency), number(p.get(THROUGHPUT)),
                           number(p.get("request_throughput"), 2), number(p.get("p50_ttft_ms"), 0),
                           number(p.get("p99_ttft_ms"), 0), number(p.get("p50_itl_ms")),
                           number(p.get("p99_itl_ms"), 0), number(p.get("p50_e2el_ms"), 0), str(p.repeats),
                           str(p.failed)]))
    return [*lines, ""]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
