"""`llmcluster keys new`: makes an API key and the keys-file entry that holds only its digest."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from cluster.console import fail

# The key store and its schema (pydantic) load when a key is made, not with every `llmcluster` command.

keys_app = typer.Typer(help="API keys for the keys file (router.auth.keys_file).", no_args_is_help=True)

KEY_PREFIX = "sk-llmc-"
# 32 random bytes: as strong as the SHA-256 digest that stands for the key.
KEY_BYTES = 32


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def entry_yaml(name: str, key: str) -> str:
    """A keys-file list item for `key`, with its optional fields as comments to fill in."""
    from serve_app.tenancy.keys import digest_of

    return (f"  - name: {name}\n"
            f"    key_sha256: {digest_of(key)}\n"
            f'    models: ["*"]          # every model: narrow it to the names or aliases this key may use\n'
            f"    # rpm: 600             # optional quotas: requests per minute,\n"
            f"    # tpm: 200000          # tokens per minute (prompt + completion),\n"
            f"    # max_concurrent: 32   # requests at once\n")


@keys_app.command("new")
def new(name: Annotated[str, typer.Argument(
        help="Tenant name: unique in the keys file, shown in metrics and logs instead of the key.")]) -> None:
    """Print a new random API key and a keys-file entry holding its SHA-256 digest.

    The key is shown once and stored nowhere: hand it to its holder, paste the entry under `keys:`."""
    from pydantic import ValidationError

    from serve_app.tenancy.keys import digest_of
    from serve_app.tenancy.keys_file import ALL_MODELS, KeyEntry

    key = new_key()
    try:  # the entry's own schema checks the name
        KeyEntry(name=name, key_sha256=digest_of(key), models=(ALL_MODELS,))
    except ValidationError as exc:
        fail(f"name {name!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    # Plain echo, not the rich console: it would wrap the long lines and break the key and the YAML.
    typer.echo(f"API key for {name} (shown once; only its digest goes in the keys file):\n")
    typer.echo(f"  {key}\n")
    typer.echo("Add this entry under `keys:` in the keys file (router.auth.keys_file, see docs/security.md):\n")
    typer.echo(entry_yaml(name, key))
