"""Benchmark: a batch job against vLLM's offline LLM.generate on the same prompts, in output tokens/s."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import psutil
import typer

from cluster.batch import run_batch
from serve_app.config import ModelConfig, load_config

logger = logging.getLogger(__name__)

SUBJECTS = ["the ocean", "a lighthouse keeper", "bread baking", "mountain goats", "the moon", "jazz",
            "old maps", "honeybees", "a train station", "winter storms", "chess openings", "glass blowing",
            "desert plants", "city parks", "paper cranes", "volcanoes", "a quiet library", "river otters"]
FORMS = ["Write a short story about {}.", "Explain {} to a child.", "List some facts about {}.",
         "Describe {} in a poem.", "Give advice about {}.", "Write a diary entry about {}."]
WARMUP_REQUESTS = 16


@dataclass(frozen=True)
class Measurement:
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def prompts(count: int, start: int = 0) -> list[str]:
    """`count` different prompts; the number leads so that no two share a prefix-cache block."""
    return [f"{i}. " + FORMS[i % len(FORMS)].format(SUBJECTS[i // len(FORMS) % len(SUBJECTS)])
            for i in range(start, start + count)]


def measure_batch(config: Path, model: str, texts: list[str], sampling: dict[str, Any], folder: Path,
                  max_in_flight: int | None) -> tuple[Measurement, float]:
    """The batch job's own throughput (from its engine's first request to its last answer) and its wall time."""
    source, out = folder / "requests.jsonl", folder / "answers.jsonl"
    source.write_text("".join(json.dumps({"prompt": text, **sampling}) + "\n" for text in texts))
    summary = run_batch(config, model, source, out, quiet=True, max_in_flight=max_in_flight)
    if summary.failed or not summary.complete:
        raise RuntimeError(f"the batch job did not answer every request: {summary.lines()}")
    return Measurement(summary.output_tokens, summary.output_tokens / summary.throughput), summary.wall_s


def measure_offline(model: ModelConfig, texts: list[str], sampling: dict[str, Any]) -> Measurement:
    """vLLM's offline engine with the same engine arguments, warmed up on other prompts first."""
    from serve_app.llm_server import engine_spec
    from serve_app.model_source import resolve_source
    from serve_app.vllm_adapter import OfflineEngine

    engine = OfflineEngine(engine_spec(model, resolve_source(model.source)))
    try:
        engine.generate(prompts(WARMUP_REQUESTS, start=len(texts)), sampling)
        started = time.perf_counter()
        tokens = sum(engine.generate(texts, sampling))
        return Measurement(tokens, time.perf_counter() - started)
    finally:
        engine.shutdown()


def wait_for_children(timeout_s: float = 60) -> None:
    # The batch job's engine must be gone before the offline one starts, or the two share the engine's core.
    _, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=timeout_s)
    if alive:
        logger.warning("processes of the batch job still running: %s", [p.pid for p in alive])


def main(
    config: Annotated[Path, typer.Option(help="Cluster config (YAML).")] = Path("configs/local.yaml"),
    model: Annotated[str, typer.Option(help="Model of the config to run.")] = "smollm2",
    requests: Annotated[int, typer.Option(help="Prompts, each different.")] = 400,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per request (EOS ignored).")] = 32,
    max_in_flight: Annotated[Optional[int], typer.Option(help="The batch job's --max-in-flight.")] = None,
) -> None:
    """Run the same prompts through `llmcluster batch` and through vLLM's offline LLM.generate; print both."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Greedy and a fixed length: both sides make the same number of tokens, and the ratio is one of times.
    sampling = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
    texts = prompts(requests)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as folder:
        batch, batch_wall_s = measure_batch(config, model, texts, sampling, Path(folder), max_in_flight)
    wait_for_children()
    offline = measure_offline(load_config(config).model(model), texts, sampling)
    print(f"{requests} prompts x {max_tokens} output tokens, greedy, model {model} of {config}")
    print(f"batch job (llmcluster batch):  {batch.output_tokens} tokens in {batch.seconds:.1f}s = "
          f"{batch.tokens_per_s:.1f} output tokens/s (wall {batch_wall_s:.1f}s with Ray and engine start)")
    print(f"offline vLLM LLM.generate:     {offline.output_tokens} tokens in {offline.seconds:.1f}s = "
          f"{offline.tokens_per_s:.1f} output tokens/s")
    print(f"ratio batch / offline: {batch.tokens_per_s / offline.tokens_per_s:.2f} (target 0.90)")


if __name__ == "__main__":
    typer.run(main)
