"""The `llmcluster` command line."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cluster import batch_command
from cluster import keys_command
from cluster import plan_command
from cluster import ray_session
from cluster import render_command
from cluster import status_command
from cluster.bench import command as bench_command
from cluster.console import console, fail, warn
from serve_app.log_setup import LogFormat, configure_logging

if TYPE_CHECKING:
    from serve_app.config import ClusterConfig
    from serve_app.tenancy.keys import KeyStore

# The config models (pydantic) and the key store load inside the commands that need them, so that light
# commands such as `llmcluster status` start fast on a machine busy serving.

app = typer.Typer(help="An OpenAI-compatible LLM serving cluster on Ray.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

DEFAULT_CONFIG = Path("configs/local.yaml")
ConfigArg = Annotated[Path, typer.Argument(help="Cluster config (YAML).")]
AddressOption = Annotated[Optional[str], typer.Option(
    "--address", help="Ray cluster to use (default: RAY_ADDRESS, else the one `llmcluster serve` started).")]
logger = logging.getLogger(__name__)


def _load(path: Path) -> ClusterConfig:
    from serve_app.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))


def _load_keys(cluster: ClusterConfig) -> KeyStore:
    """The API keys the router will load, read now so a bad keys file stops the command before anything starts."""
    from serve_app.tenancy.keys import KeysFileError, load_key_store, served_model_names

    try:
        return load_key_store(cluster.router, served_model_names(cluster))
    except KeysFileError as exc:
        fail(str(exc))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False) -> None:
    configure_logging("text", logging.DEBUG if verbose else logging.INFO)


@app.command()
def validate(config: ConfigArg = DEFAULT_CONFIG) -> None:
    """Check a config and exit non-zero, naming the field, when it is invalid.

    Also warns, from each model's config.json when it is on this machine, when a model cannot fit the
    parallelism and GPUs it declares."""
    cluster = _load(config)
    keys = _load_keys(cluster)
    console.print(f"{config}: ok ({len(cluster.models)} model(s): "
                  f"{', '.join(m.name for m in cluster.models)})")
    tenants = ", ".join(tenant.name for tenant in keys.tenants)
    console.print(f"API keys: {len(keys.tenants)} ({tenants})" if tenants else "API keys: none (the API is open)",
                  highlight=False)
    from cluster.fit_check import check_config

    warn(check_config(cluster).lines())


@app.command()
def serve(
    config: ConfigArg = DEFAULT_CONFIG,
    address: AddressOption = None,
    port: Annotated[Optional[int], typer.Option(help="Override router.port.")] = None,
    detach: Annotated[bool, typer.Option(help="Deploy and return instead of staying in the foreground.")] = False,
    log_format: Annotated[Optional[LogFormat], typer.Option(help="Override logging.format: text or json.")] = None,
) -> None:
    """Deploy CONFIG on a local Ray cluster (or the one at --address) and serve until Ctrl-C or SIGTERM.

    On either, the application is deleted, its replicas finishing their in-flight requests (up to each model's
    drain_timeout_s), and a Ray cluster this command started is taken down; it then exits 0."""
    cluster = _serving_config(config, port, log_format)
    from cluster import foreground
    from cluster.deploy import base_url, deploy
    from serve_app.config import longest_drain_s

    address = address or os.environ.get("RAY_ADDRESS")
    if detach and not address:
        fail("--detach needs a running Ray cluster (--address or RAY_ADDRESS)")
    local_gcs = _join_or_start_ray(cluster, address)
    address = address or local_gcs
    url = base_url(cluster)
    console.print(f"deploying {cluster.cluster.name} ...")
    started = time.monotonic()
    if detach:
        deploy(cluster)
        _print_ready(cluster, url, time.monotonic() - started)
        return
    stop = foreground.stop_on_signals()  # after ray.init, which installs a SIGTERM handler of its own
    try:
        if foreground.deploy_until_stopped(cluster, stop):
            _print_ready(cluster, url, time.monotonic() - started)
            ray_session.record_local_cluster(ray_session.LocalCluster(
                address, cluster.cluster.name, url, os.getpid(), os.environ.get("RAY_AUTH_MODE")))
            foreground.serve_until_stopped(stop, cluster.cluster.name)
    finally:
        console.print("shutting down ...")
        foreground.stop_serving(cluster.cluster.name, longest_drain_s(cluster), local_gcs)


def _join_or_start_ray(cluster: ClusterConfig, address: Optional[str]) -> Optional[str]:
    """Join the Ray cluster at `address`, else start one in this process; the GCS address of one started here."""
    if address:
        ray_session.join_ray(address)
        return None
    from serve_app.model_source import resolve_source
    from serve_app.tracing import exporter_env

    for model in cluster.models:  # convert builtin models up front: a failure shows here, not in a replica
        resolve_source(model.source)
    os.environ.update(exporter_env(cluster.router.tracing))  # Ray's processes (Serve's proxy) inherit it
    return ray_session.start_local_ray()


def _serving_config(path: Path, port: Optional[int], log_format: Optional[LogFormat] = None) -> ClusterConfig:
    """The config to deploy, its API keys checked: a bad keys file stops `serve` before Ray starts."""
    from serve_app.tenancy.keys import pin_keys_file

    cluster = _load(path)
    router = pin_keys_file(cluster.router)
    if port is not None:
        router = router.model_copy(update={"port": port})
    logs = cluster.logging.model_copy(update={"format": log_format.value}) if log_format else cluster.logging
    cluster = cluster.model_copy(update={"router": router, "logging": logs})
    configure_logging(logs.format, logging.getLogger().level)  # this process logs as its replicas will
    if _load_keys(cluster).open:
        logger.warning("no API keys configured (router.auth.keys_file, $LLMCLUSTER_KEYS_FILE or "
                       "router.api_keys_env): the API is open, no key required")
    return cluster


def _print_ready(cluster: ClusterConfig, url: str, seconds: float) -> None:
    console.print(f"[green]ready[/green] in {seconds:.0f}s: OpenAI endpoint {url}")
    for model in cluster.models:
        aliases = f" (aliases: {', '.join(model.aliases)})" if model.aliases else ""
        console.print(f"  model {model.name}{aliases}")
    console.print("Ctrl-C to stop.")


def _connect(address: Optional[str]) -> None:
    # Ray reads its auth settings once, when first imported: connect before anything imports ray.
    if not ray_session.connect(address):
        fail("no running cluster found; start one with `llmcluster serve` or pass --address", status=1)


@app.command()
def shutdown(address: AddressOption = None,
             name: Annotated[Optional[str], typer.Option(help="Application to remove (default: all).")] = None
             ) -> None:
    """Remove the deployed application (a foreground `llmcluster serve` then exits)."""
    _connect(address)
    from ray import serve

    from cluster.deploy import remove

    names = [name] if name else list(serve.status().applications)
    removed = []
    for app_name in names:
        console.print(f"removing {app_name}: replicas finish their requests in flight first "
                      "(up to models[].drain_timeout_s)")
        if remove(app_name):
            removed.append(app_name)
    console.print(f"removed {', '.join(removed)}" if removed else "nothing to remove")


@app.command(name="drain-node")
def drain_node(
    dashboard: Annotated[str, typer.Option(
        help="The Ray head's dashboard, where Serve's REST API answers, e.g. http://HEAD:8265.")],
    deadline_s: Annotated[int, typer.Option("--deadline-s", min=1, help=(
        "Seconds until the pod is killed: Serve stops each replica here at the latest its drain timeout "
        "before them, and the wait ends then."))],
    node_id: Annotated[Optional[str], typer.Option(
        help="Ray node to drain (default: the one at this machine's address that runs Serve replicas).")] = None,
    address: Annotated[Optional[str], typer.Option(
        help="GCS address for `ray drain-node` (default: RAY_ADDRESS, else the local Ray).")] = None,
) -> None:
    """Drain this pod's Ray node before the pod stops (the rendered worker pods' preStop hook).

    Serve starts replacements of the node's replicas on other nodes and stops these gracefully; this waits until
    none is left, then exits 0 (at once when none ran here). Exits 1 when replicas are still there at the
    deadline, 2 when Ray refuses the drain or Serve cannot be read."""
    import subprocess

    from cluster.pod_drain import drain_node as drain

    try:
        result = drain(dashboard, deadline_s, node_id=node_id, address=address)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        fail(f"drain failed: {exc}")
    if not result.drained:
        fail(f"{len(result.left)} replica(s) still on this node after {result.waited_s:.0f}s: "
             f"{', '.join(result.left)}", status=1)
    console.print(f"drained: no Serve replica left on this node after {result.waited_s:.0f}s", highlight=False)


app.command(name="plan")(plan_command.plan)
app.command(name="status")(status_command.status)


app.add_typer(render_command.render_app, name="render")
app.add_typer(keys_command.keys_app, name="keys")
app.command(name="batch")(batch_command.batch)
app.command(name="bench")(bench_command.bench)


if __name__ == "__main__":
    app()
