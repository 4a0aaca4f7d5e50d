"""`llmcluster bench` end to end on a tiny workload: raw `vllm serve`, then llmcluster, each driven by
`vllm bench serve`; it writes the JSON, the table and the plots, and leaves no process behind. Its figures are
not asserted: on a tiny workload they mean little."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import CLI
from tests.processes import alive, kill_all, title

# Two engine starts (raw vLLM, then llmcluster with Ray) and two client runs of 4 short requests.
BENCH_TIMEOUT_S = 600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_watching_descendants(command: list[str], timeout_s: float) -> tuple[int, str, dict[psutil.Process, str]]:
    """Run `command`, noting every process of its tree (with its command line) while it runs; its exit code,
    output and those processes. Output goes to a file: a pipe nobody reads would stall it."""
    log = Path(command[command.index("--out") + 1]).with_suffix(".log")
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    seen: dict[psutil.Process, str] = {}
    deadline = time.monotonic() + timeout_s
    root = psutil.Process(process.pid)
    while process.poll() is None and time.monotonic() < deadline:
        try:
            for child in root.children(recursive=True):  # again each time: vLLM's processes rename themselves
                seen[child] = title(child) or seen.get(child, "")
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.5)
    if process.poll() is None:
        kill_all([root, *seen])
    process.wait()
    return process.returncode, log.read_text(errors="replace"), seen


def test_bench_measures_both_systems_and_writes_json_table_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    started = time.monotonic()
    code, output, descendants = run_watching_descendants(
        [CLI, "bench", "configs/local.yaml", "--workloads", "random", "--concurrency", "2", "--repeats", "1",
         "--prompts", "4", "--input-len", "32", "--output-len", "8", "--warmup-prompts", "0", "--out", str(out)],
        BENCH_TIMEOUT_S)
    print(f"\nllmcluster bench, tiny workload, both systems: {time.monotonic() - started:.0f}s")
    assert code == 0, output[-4000:]
    commands = list(descendants.values())
    for server in ("serve_app.vllm_adapter serve", "cluster.cli serve", "VLLM::EngineCore"):
        assert any(server in command for command in commands), f"never saw {server}: {[c[:80] for c in commands]}"
    left = [f"{proc.pid} {command[:100]}" for proc, command in descendants.items() if alive(proc)]
    assert left == [], "processes of the benchmark outlived it"

    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["systems"] == ["vllm", "llmcluster"]
    assert results["meta"]["engine_args"]["dtype"] == "float32"
    runs = {run["system"]: run for run in results["runs"]}
    assert set(runs) == {"vllm", "llmcluster"} and len(results["runs"]) == 2
    for run in runs.values():
        assert (run["concurrency"], run["completed"], run["failed"]) == (2, 4, 0)
        assert run["metrics"]["output_throughput"] > 0 and run["metrics"]["p50_itl_ms"] > 0
    assert runs["vllm"]["seed"] == runs["llmcluster"]["seed"]  # the same prompts on both
    [comparison] = results["comparisons"]
    assert (comparison["baseline"], comparison["system"]) == ("vllm", "llmcluster")
    assert comparison["throughput_ratio"] > 0

    table = (out / "results.md").read_text()
    assert "## random:" in table and "| 2 | " in table
    assert (out / "random.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "random.png").stat().st_size > 10_000
