"""What the benchmark sends: workloads, the runs of a plan, and the `vllm bench serve` arguments of one run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Percentiles vLLM's client reports for each latency metric; the report reads p50 and p99.
PERCENTILES = (50, 90, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
# Enough prompts per point that the client keeps the concurrency busy for a while and the medians mean something.
MIN_PROMPTS = 16
PROMPTS_PER_CONCURRENCY = 4


@dataclass(frozen=True)
class Workload:
    """A prompt mix: random token prompts, or groups of them that share a leading prefix."""

    name: str
    input_len: int  # tokens of each prompt; with a shared prefix, the part after it
    output_len: int  # tokens generated per request (end-of-sequence ignored)
    shared_prefix_len: int = 0  # 0: no two prompts share anything; else the length of each group's prefix
    prefixes: int = 4  # distinct prefixes when shared_prefix_len > 0

    def describe(self) -> str:
        if not self.shared_prefix_len:
            return f"random prompts, {self.input_len} tokens in, {self.output_len} out"
        return (f"{self.prefixes} shared {self.shared_prefix_len}-token prefixes, each with its own "
                f"{self.input_len}-token suffixes, {self.output_len} out")

    def prompts(self, requested: int) -> int:
        """`requested`, rounded up to a whole number of prompts per prefix."""
        if not self.shared_prefix_len:
            return requested
        groups = min(self.prefixes, requested)
        return -(-requested // groups) * groups

    def dataset_args(self, prompts: int) -> list[str]:
        if not self.shared_prefix_len:
            return ["--dataset-name", "random", "--random-input-len", str(self.input_len),
                    "--random-output-len", str(self.output_len)]
        return ["--dataset-name", "prefix_repetition",
                "--prefix-repetition-prefix-len", str(self.shared_prefix_len),
                "--prefix-repetition-suffix-len", str(self.input_len),
                "--prefix-repetition-num-prefixes", str(min(self.prefixes, prompts)),
                "--prefix-repetition-output-len", str(self.output_len)]


def standard_workloads(input_len: int = 128, output_len: int = 64, prefix_len: int = 512) -> dict[str, Workload]:
    """The workloads `llmcluster bench --workloads` names."""
    return {
        "random": Workload("random", input_len, output_len),
        "prefix": Workload("prefix", input_len, output_len, shared_prefix_len=prefix_len),
    }


@dataclass(frozen=True)
class Run:
    """One client run: a workload at a concurrency, the `repeat`-th time, with prompts drawn from `seed`."""

    workload: Workload
    concurrency: int
    repeat: int
    seed: int
    prompts: int

    @property
    def name(self) -> str:
        return f"{self.workload.name}-c{self.concurrency}-r{self.repeat}"


def plan_runs(workloads: list[Workload], concurrencies: list[int], repeats: int, seed: int,
              prompts: int | None = None) -> list[Run]:
    """Every run of one system, repeats outermost so that drift spreads over all points. Each run gets its own
    seed, so that no run finds its prompts in the prefix cache; each system gets the same runs (same prompts)."""
    runs = []
    for repeat in range(1, repeats + 1):
        for workload in workloads:
            for concurrency in concurrencies:
                wanted = prompts or max(MIN_PROMPTS, PROMPTS_PER_CONCURRENCY * concurrency)
                runs.append(Run(workload, concurrency, repeat, seed + len(runs) + 1, workload.prompts(wanted)))
    return runs


def warmup_run(workloads: list[Workload], concurrencies: list[int], seed: int, prompts: int) -> Run:
    """A run at the highest concurrency whose results are thrown away: first requests pay one-time costs."""
    concurrency = max(concurrencies)
    return Run(workloads[0], concurrency, 0, seed, workloads[0].prompts(max(prompts, 1)))


def client_args(run: Run, base_url: str, model: str, tokenizer: str, result: Path) -> list[str]:
    """`vllm bench serve`'s arguments for `run` against the OpenAI server at `base_url`."""
    return [
        "bench", "serve", "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", tokenizer,
        *run.workload.dataset_args(run.prompts),
        "--num-prompts", str(run.prompts), "--max-concurrency", str(run.concurrency), "--request-rate", "inf",
        "--ignore-eos", "--seed", str(run.seed),
        "--percentile-metrics", ",".join(LATENCY_METRICS), "--metric-percentiles", ",".join(map(str, PERCENTILES)),
        "--save-result", "--result-dir", str(result.parent), "--result-filename", result.name, "--disable-tqdm",
    ]
