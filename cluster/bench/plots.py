"""PNG charts of a benchmark: throughput, TTFT and ITL against concurrency, the systems side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.bench.report import THROUGHPUT, Point, Report, difference, ratio

# Bar panels: (title, figure, how a bar is labelled against the first system's), in grid order; the ratio panel
# takes the sixth place.
BAR_PANELS = (
    ("output tokens/s", THROUGHPUT, "ratio"),
    ("TTFT p50 (ms)", "p50_ttft_ms", "diff"),
    ("ITL p50 (ms)", "p50_itl_ms", "ratio"),
    ("TTFT p99 (ms)", "p99_ttft_ms", "diff"),
    ("ITL p99 (ms)", "p99_itl_ms", "ratio"),
)
# The ratio panel: each system over the first, for these figures.
RATIO_LINES = (("output tok/s", THROUGHPUT, "o-"), ("ITL p50", "p50_itl_ms", "s--"), ("ITL p99", "p99_itl_ms", "^:"))


def write_plots(report: Report, folder: Path) -> list[Path]:
    """One PNG per workload in `folder`; the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    import matplotlib.pyplot as plt

    written = []
    points = report.points
    for workload, described in report.meta.get("workloads", {}).items():
        mine = [p for p in points if p.workload == workload]
        if not mine:
            continue
        figure, axes = plt.subplots(2, 3, figsize=(16, 8.5), layout="constrained")
        grid = list(axes.flat)
        for axis, (title, name, versus) in zip(grid, BAR_PANELS):
            _bars(axis, mine, report.systems, title, name, versus)
        _ratios(grid[-1], mine, report.systems)
        figure.suptitle(f"{report.meta.get('model', '')}, {workload}: {described.get('description', '')}\n"
                        f"{report.meta.get('machine', {}).get('summary', '')}, {report.meta.get('date', '')}, "
                        f"medians of {report.meta.get('repeats', '?')} runs")
        path = folder / f"{workload}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _bars(axis: Any, points: list[Point], systems: list[str], title: str, name: str, versus: str) -> None:
    """Grouped bars per concurrency, one per system; the others labelled against the first."""
    concurrencies = sorted({p.concurrency for p in points})
    by_key = {(p.system, p.concurrency): p for p in points}
    width = 0.8 / len(systems)
    for index, system in enumerate(systems):
        xs, heights, labels = [], [], []
        for slot, concurrency in enumerate(concurrencies):
            point, base = by_key.get((system, concurrency)), by_key.get((systems[0], concurrency))
            if point is None or point.get(name) is None:
                continue
            xs.append(slot - 0.4 + width * (index + 0.5))
            heights.append(point.get(name))
            labels.append(_versus(point, base, name, versus) if index else "")
        bars = axis.bar(xs, heights, width * 0.95, label=system)
        axis.bar_label(bars, labels=labels, fontsize=8, padding=2)
    _concurrency_axis(axis, concurrencies, title)


def _ratios(axis: Any, points: list[Point], systems: list[str]) -> None:
    """Each other system over the first, against concurrency: 1.0 is parity."""
    concurrencies = sorted({p.concurrency for p in points})
    by_key = {(p.system, p.concurrency): p for p in points}
    for system in systems[1:]:
        for label, name, style in RATIO_LINES:
            pairs = [(slot, ratio(by_key[(system, c)].get(name), by_key[(systems[0], c)].get(name)))
                     for slot, c in enumerate(concurrencies) if (system, c) in by_key and (systems[0], c) in by_key]
            pairs = [(slot, value) for slot, value in pairs if value is not None]
            if pairs:
                axis.plot(*zip(*pairs), style, label=f"{label}, {system}" if len(systems) > 2 else label)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    _concurrency_axis(axis, concurrencies, f"ratio to {systems[0]}")


def _concurrency_axis(axis: Any, concurrencies: list[int], title: str) -> None:
    axis.set_xticks(range(len(concurrencies)), [str(c) for c in concurrencies])
    axis.set_xlim(-0.5, len(concurrencies) - 0.5)
    axis.set_xlabel("concurrency")
    axis.set_title(title)
    axis.margins(y=0.15)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)


def _versus(point: Point, base: Point | None, name: str, how: str) -> str:
    if base is None:
        return ""
    if how == "diff":
        value = difference(point.get(name), base.get(name))
        return "" if value is None else f"{value:+.0f}"
    value = ratio(point.get(name), base.get(name))
    return "" if value is None else f"x{value:.2f}"
