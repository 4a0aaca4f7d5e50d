"""Metric families as plain data: taken from a prometheus registry, relabelled, merged and rendered as text."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

# The classic text format: every Prometheus version reads it, and it keeps vLLM's `vllm:` names as they are.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# prometheus_client adds a `<name>_created` gauge beside every counter and histogram: only noise once merged.
_CREATED = "_created"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    """One metric family of one process, small and picklable: what replicas send to the metrics hub."""

    name: str
    kind: str  # counter, gauge, histogram, summary, info, ...: prometheus_client's type names
    doc: str
    samples: tuple[Sample, ...]


def families_of(registry: CollectorRegistry, *, prefix: str = "", labels: dict[str, str] | None = None) -> list[Family]:
    """The families of `registry` whose names start with `prefix`, each sample with `labels` added."""
    extra = tuple(sorted((labels or {}).items()))
    families = []
    for metric in registry.collect():
        if not metric.name.startswith(prefix):
            continue
        samples = tuple(Sample(s.name, _merged(s.labels, extra), s.value) for s in metric.samples
                        if not s.name.endswith(_CREATED))
        families.append(Family(metric.name, metric.type, metric.documentation, samples))
    return families


def _merged(labels: dict[str, str], extra: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    if not extra:
        return tuple(labels.items())
    # The added labels win: they say where a sample comes from, which the source process cannot know.
    names = {name for name, _ in extra}
    return tuple((k, v) for k, v in labels.items() if k not in names) + extra


def exposition(families: Iterable[Family]) -> bytes:
    """The Prometheus text of `families`, merged by name; the first family of a name gives its help and type,
    and a sample repeated with the same labels keeps its first value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families))
    return generate_latest(registry)


class _Merged:
    """A collector yielding fixed families: prometheus_client writes the text, not llmcluster."""

    def __init__(self, families: Iterable[Family]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for family in self._families:
            metric = merged.get(family.name)
            if metric is None:
                metric = merged[family.name] = Metric(family.name, family.doc, family.kind)
            for sample in family.samples:
                identity = (sample.name, tuple(sorted(sample.labels)))
                if identity not in seen:
                    seen.add(identity)
                    metric.add_sample(sample.name, dict(sample.labels), sample.value)
        yield from merged.values()

    def describe(self) -> list[Metric]:
        return []
