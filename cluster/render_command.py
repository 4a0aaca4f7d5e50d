"""`llmcluster render k8s`: writes the KubeRay manifests of a config into a directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.console import fail, warn

render_app = typer.Typer(help="Render a config into deployable manifests.", no_args_is_help=True)


def default_out_dir(config_path: Path) -> Path:
    return Path("k8s") / config_path.stem


@render_app.command("k8s")
def k8s(
    config: Annotated[Path, typer.Argument(help="Cluster config (YAML).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Directory for the manifests (default: k8s/<config file stem>/).")] = None,
) -> None:
    """Render CONFIG as a RayService, a batch RayJob, a Service, a NetworkPolicy, a PodMonitor and a
    kustomization.yaml."""
    from cluster.cloud_presets import PresetError
    from cluster.fit_check import check_config
    from cluster.k8s_pods import keys_secret_command
    from cluster.k8s_render import render_files, write_files
    from cluster.node_pools import PoolError
    from serve_app.config import ConfigError, load_config

    try:
        cluster = load_config(config)
        files = render_files(cluster, source=config.name)
    except (ConfigError, PoolError, PresetError) as exc:
        fail(str(exc))
    warn(check_config(cluster).lines())
    out_dir = out or default_out_dir(config)
    write_files(files, out_dir)
    typer.echo(f"wrote {len(files)} files to {out_dir}/: {', '.join(files)}")
    if cluster.router.auth.keys_file:
        typer.echo(f"the pods mount the API keys from a Secret that is not rendered; create it first with:\n"
                   f"  {keys_secret_command(cluster)}")
    typer.echo(f"apply with: kubectl apply -k {out_dir}")
