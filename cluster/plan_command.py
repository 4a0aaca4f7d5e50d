"""`llmcluster plan`: how many GPUs, in which layout (tensor x pipeline, or expert parallel ranks), a model needs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.table import Table

from cluster import planner
from cluster.console import console, fail
from cluster.model_shape import BYTES_PER_PARAM, ModelShapeError, read_shape

GB = planner.GB


def plan(
    model: Annotated[str, typer.Argument(
        help="A model directory (or its config.json), builtin:<name>, or a Hugging Face repo id already in the "
             "local Hugging Face cache; nothing is downloaded.")],
    gpu: Annotated[str, typer.Option("--gpu", help=f"GPU type: {', '.join(g.name for g in planner.GPUS.values())}.")
                   ] = "H100",
    context: Annotated[int, typer.Option("--context", help="Tokens of one sequence, prompt and output.")] = 8192,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="Sequences whose KV cache the layout must hold at once.")] = 16,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs in one node.")] = 8,
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help=f"Serve the weights in this format instead of the checkpoint's: "
                        f"{', '.join(BYTES_PER_PARAM)} (awq and gptq are int4).")] = None,
    expert_parallel: Annotated[bool, typer.Option(
        "--expert-parallel", help="Size a MoE model for data-parallel ranks that share its experts "
                                  "(parallelism.data with expert: true) instead of tensor x pipeline.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Size the smallest GPU layout that serves MODEL with KV cache for CONCURRENCY x CONTEXT tokens.

    Exits 1 when the model does not fit in the nodes the planner may use, 2 on a bad argument.
    """
    try:
        shape = read_shape(model, dtype=dtype)
        result = planner.plan(shape, gpu, context, concurrency, gpus_per_node, expert_parallel=expert_parallel)
    except (ModelShapeError, planner.PlanError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    else:
        console.print(_table(result))
    if not result.fits:
        raise typer.Exit(1)


def _table(result: planner.Plan) -> Table:
    verdict = "[green]fits[/green]" if result.fits else "[red]does not fit[/red]"
    table = Table(title=f"{result.model} on {result.gpu}", show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", overflow="fold")
    memory = result.per_gpu
    params = f"{result.params / 1e9:.2f} B" if result.params >= 1e9 else f"{result.params / 1e6:.0f} M"
    gpus = f"{result.layout.gpus} GPU{'s' if result.layout.gpus > 1 else ''}"
    rows = (
        ("verdict", verdict),
        ("parameters", params),
        ("weights", f"{result.weight_bytes / GB:.1f} GB ({result.weight_format})"),
        ("KV bytes/token", f"{result.kv_bytes_per_token:,} ({result.kv_cache_dtype})"),
        ("KV total", f"{result.kv_bytes_total / GB:.1f} GB for {result.concurrency} x {result.context} tokens"),
        ("layout" if result.fits else "largest tried", f"{result.layout} ({gpus})"),
        ("per-GPU memory", f"{memory.used / GB:.1f} of {memory.budget / GB:.1f} GB budget "
                           f"({result.memory_utilization:.0%} of {memory.capacity / GB:.1f} GB)"),
        ("  weights", f"{memory.weights / GB:.1f} GB"),
        ("  KV cache", f"{memory.kv_cache / GB:.1f} GB"),
        ("  activations + overhead", f"{(memory.activations + memory.overhead) / GB:.1f} GB"),
        ("  free", f"{memory.free / GB:.1f} GB"),
        ("why", result.reason),
        *(("note", note) for note in result.notes),
    )
    for row in rows:
        table.add_row(*row)
    return table
