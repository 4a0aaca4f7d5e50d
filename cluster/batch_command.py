"""`llmcluster batch`: run a batch job from the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.console import fail

# The exit status of a run stopped by Ctrl-C or SIGTERM, as shells report a SIGINT.
INTERRUPTED_EXIT = 130


def batch(
    config: Annotated[Path, typer.Argument(help="Cluster config (YAML).")],
    model: Annotated[str, typer.Option("--model", help="Model (name or alias) that answers every request.")],
    input: Annotated[Path, typer.Option("--input", help="JSONL file of OpenAI batch request lines, or plain "
                                                        "{\"prompt\": ...} / {\"messages\": [...]} lines.")],
    output: Annotated[Path, typer.Option("--output", help="JSONL file the answers are appended to; answers "
                                                          "already there are skipped, so a rerun resumes.")],
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster to run on (default: RAY_ADDRESS, else a local one started for the job).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log progress instead of showing a progress bar.")] = False,
    max_in_flight: Annotated[Optional[int], typer.Option(
        "--max-in-flight", min=1,
        help="Requests each model replica works on at once (default: twice the engine's max_num_seqs).")] = None,
    kubernetes: Annotated[bool, typer.Option(
        "--kubernetes", help="Submit the job as the RayJob rendered from CONFIG instead (kubeconfig or in-cluster "
                             "credentials); --input and --output are then paths in the job's head pod.")] = False,
) -> None:
    """Answer every request in --input with a model of CONFIG, on Ray Data; rerun the same command to resume."""
    from cluster.batch import BatchError, OutputFileError, run_batch
    from serve_app.config import ConfigError, load_config

    if kubernetes:
        _submit(config, model, input, output)
        return
    try:
        summary = run_batch(load_config(config), model, input, output, address=address or os.environ.get("RAY_ADDRESS"),
                            quiet=quiet, max_in_flight=max_in_flight)
    except (ConfigError, BatchError, OutputFileError) as exc:
        fail(str(exc))
    if summary.interrupted:
        raise typer.Exit(INTERRUPTED_EXIT)


def _submit(config: Path, model: str, input: Path, output: Path) -> None:
    from cluster.batch import BatchError
    from cluster.batch.submit import batch_rayjob, follow_hint, kubernetes_api, submit_rayjob
    from serve_app.config import ConfigError, load_config

    try:
        job = batch_rayjob(load_config(config), model, input.as_posix(), output.as_posix())
    except (ConfigError, BatchError) as exc:
        fail(str(exc))
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    try:
        submit_rayjob(kubernetes_api(), job)
    except ConfigException as exc:
        fail(f"no Kubernetes credentials ({exc}); set KUBECONFIG or run in a pod")
    except ApiException as exc:  # e.g. 404 when KubeRay's CRDs are not installed, 403 without RBAC
        fail(f"the API server refused the RayJob: {exc.status} {exc.reason}", status=1)
    for line in follow_hint(job):
        print(line)
