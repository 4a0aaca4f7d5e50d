"""The benchmark report: figures read from vLLM's result files, medians over repeats, the comparisons the targets
are stated in, and the Markdown table."""

from __future__ import annotations

import json

import pytest

from cluster.bench.report import Report, compare, points, run_result
from cluster.bench.table import markdown

# A result file as `vllm bench serve --save-result` (vLLM 0.32) writes it, per-request lists shortened.
VLLM_RESULT = {
    "date": "20261123-205324", "endpoint_type": "openai", "backend": "openai", "label": None, "model_id": "smollm2",
    "tokenizer_id": "/models/smollm2", "num_prompts": 4, "request_rate": "inf", "burstiness": 1.0,
    "max_concurrency": 2, "duration": 1.4705, "completed": 4, "failed": 0, "total_input_tokens": 128,
    "total_output_tokens": 32, "request_throughput": 2.72, "request_goodput": None, "output_throughput": 21.76,
    "total_token_throughput": 108.8, "latencies": [0.72, 0.72, 0.74, 0.67], "queue_times": [0.0, 0.0, 0.72, 0.72],
    "max_output_tokens_per_s": 19.0, "max_concurrent_requests": 4, "rtfx": 0.0,
    "mean_ttft_ms": 223.2, "median_ttft_ms": 237.0, "std_ttft_ms": 43.4, "p50_ttft_ms": 237.0, "p90_ttft_ms": 258.5,
    "p99_ttft_ms": 266.8, "mean_tpot_ms": 70.5, "median_tpot_ms": 69.9, "std_tpot_ms": 2.4, "p50_tpot_ms": 69.9,
    "p90_tpot_ms": 73.1, "p99_tpot_ms": 74.3, "mean_itl_ms": 70.5, "median_itl_ms": 68.9, "std_itl_ms": 9.9,
    "p50_itl_ms": 68.9, "p90_itl_ms": 75.6, "p99_itl_ms": 106.9, "mean_e2el_ms": 717.0, "median_e2el_ms": 726.5,
    "std_e2el_ms": 26.5, "p50_e2el_ms": 726.5, "p90_e2el_ms": 737.6, "p99_e2el_ms": 741.9,
}


def result(system: str, concurrency: int, repeat: int, workload: str = "random", failed: int = 0, **figures: float):
    return run_result(system, workload, concurrency, repeat, seed=100 + repeat,
                      result={**VLLM_RESULT, "failed": failed, **figures})


def test_a_run_keeps_vllms_throughput_and_latency_percentiles_and_drops_per_request_lists() -> None:
    run = result("vllm", 2, 1)
    assert (run.completed, run.failed, run.seed) == (4, 0, 101)
    assert run.metrics["output_throughput"] == 21.76
    assert (run.metrics["p50_ttft_ms"], run.metrics["p99_itl_ms"], run.metrics["p90_e2el_ms"]) == (237.0, 106.9, 737.6)
    assert not {"latencies", "queue_times", "date", "request_goodput"} & set(run.metrics)


def test_points_are_medians_over_the_repeats_of_each_system_workload_and_concurrency() -> None:
    runs = [result("vllm", 8, 1, output_throughput=100), result("vllm", 8, 2, output_throughput=140),
            result("vllm", 8, 3, output_throughput=120, failed=2),
            result("llmcluster", 8, 1, output_throughput=90), result("llmcluster", 8, 2, output_throughput=110),
            result("vllm", 8, 1, workload="prefix", output_throughput=60)]
    found = {(p.system, p.workload, p.concurrency): p for p in points(runs)}
    assert set(found) == {("vllm", "random", 8), ("llmcluster", "random", 8), ("vllm", "prefix", 8)}
    assert found[("vllm", "random", 8)].get("output_throughput") == 120  # the middle one of three
    assert found[("llmcluster", "random", 8)].get("output_throughput") == 100  # the mean of the middle two
    assert (found[("vllm", "random", 8)].repeats, found[("vllm", "random", 8)].failed) == (3, 2)
    assert found[("vllm", "prefix", 8)].get("output_throughput") == 60


def test_comparisons_give_throughput_ratio_ttft_difference_itl_ratio_and_itl_p99_both_ways() -> None:
    runs = [result("vllm", 8, 1, output_throughput=140, p50_ttft_ms=200, p50_itl_ms=55, p99_itl_ms=72),
            result("llmcluster", 8, 1, output_throughput=116.2, p50_ttft_ms=584, p50_itl_ms=66.55, p99_itl_ms=148)]
    [comparison] = compare(points(runs), baseline="vllm")
    assert (comparison.baseline, comparison.system, comparison.concurrency) == ("vllm", "llmcluster", 8)
    assert comparison.throughput_ratio == pytest.approx(0.83)
    assert comparison.ttft_p50_diff_ms == pytest.approx(384)
    assert comparison.itl_p50_ratio == pytest.approx(1.21)
    assert comparison.itl_p99_ms == (72, 148)


def test_a_point_the_baseline_lacks_or_cannot_divide_by_is_not_given_a_ratio() -> None:
    runs = [result("vllm", 1, 1, output_throughput=0.0), result("llmcluster", 1, 1, output_throughput=50),
            result("llmcluster", 32, 1)]
    [only] = compare(points(runs), baseline="vllm")
    assert (only.concurrency, only.throughput_ratio) == (1, None)
    assert only.ttft_p50_diff_ms == 0.0  # same canned TTFT on both sides


def report(runs: list) -> Report:
    meta = {"systems": ["vllm", "llmcluster"], "model": "smollm2", "date": "2026-11-23", "repeats": 1,
            "machine": {"summary": "2 cores (avx2)"}, "engine_args": {"dtype": "float32"},
            "workloads": {"random": {"description": "random prompts, 128 tokens in, 64 out"}}}
    return Report(meta, runs)


def test_the_table_has_one_comparison_row_per_concurrency_and_the_medians_of_each_system() -> None:
    text = markdown(report([
        result("vllm", 1, 1, output_throughput=50, p50_ttft_ms=40, p50_itl_ms=18, p99_itl_ms=56),
        result("llmcluster", 1, 1, output_throughput=50.5, p50_ttft_ms=74, p50_itl_ms=16.38, p99_itl_ms=66),
        result("vllm", 8, 1, output_throughput=140, p50_ttft_ms=200, p50_itl_ms=55, p99_itl_ms=72),
        result("llmcluster", 8, 1, output_throughput=116.2, p50_ttft_ms=584, p50_itl_ms=66.55, p99_itl_ms=148)]))
    assert "## random: random prompts, 128 tokens in, 64 out" in text
    assert "| 1 | 50.0 → 50.5 | 1.01 | 40 → 74 | +34 ms | 18.0 → 16.4 | x0.91 | 56 → 66 |" in text
    assert "| 8 | 140.0 → 116.2 | 0.83 | 200 → 584 | +384 ms | 55.0 → 66.5 | x1.21 | 72 → 148 |" in text
    assert "| llmcluster | 8 | 116.2 | 2.72 | 584 | 267 | 66.5 | 148 | 726 | 1 | 0 |" in text
    assert "failed" not in text.split("Medians")[0]


def test_the_table_warns_of_failed_requests_and_shows_missing_figures_as_na() -> None:
    partial = {key: value for key, value in VLLM_RESULT.items() if key != "p99_itl_ms"}
    runs = [run_result("vllm", "random", 1, 1, 1, partial), result("llmcluster", 1, 1, failed=3)]
    text = markdown(report(runs))
    assert "**3 requests failed**" in text
    assert "| n/a → 107 |" in text


def test_a_report_survives_its_json_form() -> None:
    original = report([result("vllm", 1, 1), result("llmcluster", 1, 1, output_throughput=20)])
    data = json.loads(json.dumps(original.to_json()))
    assert [c["throughput_ratio"] for c in data["comparisons"]] == [pytest.approx(20 / 21.76)]
    again = Report.from_json(data)
    assert again.points == original.points and again.comparisons == original.comparisons
