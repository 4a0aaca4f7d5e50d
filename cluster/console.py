"""Terminal output shared by the llmcluster commands: results on stdout, warnings and the stopping error on stderr."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, status: int = 2) -> NoReturn:
    """Print `message` as the command's error and exit with `status` (2: the input is wrong)."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(status) from None


def warn(lines: Iterable[str]) -> None:
    for line in lines:
        err_console.print(line, highlight=False, soft_wrap=True)
