"""The `llmcluster` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cluster import batch_command
from cluster import keys_command
from cluster import plan_command
from cluster import ray_session
from cluster import render_command
from cluster.console import console, fail, warn
from serve_app.config import ClusterConfig, ConfigError, load_config
from serve_app.tenancy.keys import KeyStore, KeysFileError, load_key_store, pin_keys_file, served_model_names

app = typer.Typer(help="An OpenAI-compatible LLM serving cluster on Ray.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

DEFAULT_CONFIG = Path("configs/local.yaml")
ConfigArg = Annotated[Path, typer.Argument(help="Cluster config (YAML).")]
AddressOption = Annotated[Optional[str], typer.Option(
    "--address", help="Ray cluster to use (default: RAY_ADDRESS, else the one `llmcluster serve` started).")]
# How often the foreground `serve` checks that its application still exists.
WATCH_INTERVAL_S = 2.0
logger = logging.getLogger(__name__)


def _load(path: Path) -> ClusterConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))


def _load_keys(cluster: ClusterConfig) -> KeyStore:
    """The API keys the router will load, read now so a bad keys file stops the command before anything starts."""
    try:
        return load_key_store(cluster.router, served_model_names(cluster))
    except KeysFileError as exc:
        fail(str(exc))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
) -> None:
    """Deploy CONFIG on a local Ray cluster (or the one at --address) and serve until Ctrl-C."""
    cluster = _serving_config(config, port)
    from cluster.deploy import base_url, deploy, remove
    from serve_app.model_source import resolve_source

    address = address or os.environ.get("RAY_ADDRESS")
    if detach and not address:
        fail("--detach needs a running Ray cluster (--address or RAY_ADDRESS)")
    if address:
        ray_session.join_ray(address)
    else:
        for model in cluster.models:  # convert builtin models up front: a failure shows here, not in a replica
            resolve_source(model.source)
        address = ray_session.start_local_ray()
    stop = _stop_on_signals()  # after ray.init, which installs a SIGTERM handler of its own that exits at once
    url = base_url(cluster)
    try:
        console.print(f"deploying {cluster.cluster.name} ...")
        started = time.monotonic()
        deploy(cluster)
        _print_ready(cluster, url, time.monotonic() - started)
        if detach:
            return
        ray_session.record_local_cluster(ray_session.LocalCluster(
            address, cluster.cluster.name, url, os.getpid(), os.environ.get("RAY_AUTH_MODE")))
        _wait_until_stopped(stop, cluster.cluster.name)
    finally:
        if not detach:
            console.print("shutting down ...")
            remove(cluster.cluster.name)
            ray_session.forget_local_cluster()
            ray_session.leave()


def _serving_config(path: Path, port: Optional[int]) -> ClusterConfig:
    """The config to deploy, its API keys checked: a bad keys file stops `serve` before Ray starts."""
    cluster = _load(path)
    router = pin_keys_file(cluster.router)
    if port is not None:
        router = router.model_copy(update={"port": port})
    cluster = cluster.model_copy(update={"router": router})
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


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _wait_until_stopped(stop: threading.Event, app_name: str) -> None:
    from ray import serve

    while not stop.wait(WATCH_INTERVAL_S):
        if app_name not in serve.status().applications:
            console.print(f"application {app_name} was removed")
            return


def _connect(address: Optional[str]) -> None:
    # Ray reads its auth settings once, when first imported: connect before anything imports ray.
    if not ray_session.connect(address):
        fail("no running cluster found; start one with `llmcluster serve` or pass --address", status=1)


@app.command()
def status(address: AddressOption = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
           load: Annotated[bool, typer.Option(
               "--load", help="Also ask one running replica of each model for its in-flight requests. Serve's "
                              "autoscaler counts that call as load for about 10 s: do not poll with it.")] = False,
           ) -> None:
    """Show the served models, their replicas and their state."""
    _connect(address)
    from cluster.deploy import application_status

    apps = application_status(engine_stats=load)
    if as_json:
        print(json.dumps([asdict(a) for a in apps], indent=2))
        return
    if not apps:
        console.print("no application is deployed")
    for one in apps:
        table = Table(title=f"{one.name}: {one.status}")
        for column in ("deployment", "status", "replicas", "in-flight requests", "message"):
            table.add_column(column)
        for dep in one.deployments:
            replicas = ", ".join(f"{state.lower()} {count}" for state, count in dep.replicas.items()) or "none"
            inflight = str(sum(e["unfinished_requests"] for e in dep.engine)) if dep.engine else "-"
            table.add_row(dep.name, dep.status, replicas, inflight, dep.message)
        console.print(table)


@app.command()
def shutdown(address: AddressOption = None,
             name: Annotated[Optional[str], typer.Option(help="Application to remove (default: all).")] = None
             ) -> None:
    """Remove the deployed application (a foreground `llmcluster serve` then exits)."""
    _connect(address)
    from ray import serve

    from cluster.deploy import remove

    names = [name] if name else list(serve.status().applications)
    removed = [n for n in names if remove(n)]
    console.print(f"removed {', '.join(removed)}" if removed else "nothing to remove")


app.command(name="plan")(plan_command.plan)


app.add_typer(render_command.render_app, name="render")
app.add_typer(keys_command.keys_app, name="keys")
app.command(name="batch")(batch_command.batch)


if __name__ == "__main__":
    app()
