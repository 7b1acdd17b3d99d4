"""How every command writes to the terminal or a pipe: one place for the cache commands
(cli.py) and the log commands (logs/commands.py), so neither imports the other."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # rich takes a while to import: only when a command prints a table
    from rich.console import Console


def console() -> Console:
    """Plain wide output when piped, so rows are never squeezed into 80 columns."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=220, highlight=False, color_system=None, soft_wrap=False)


def json_out(data: Any) -> None:
    """Indented on a terminal; compact otherwise, where json's C encoder writes a
    50,000-disk plan in a fraction of the time the indenting (pure Python) one takes."""
    if sys.stdout.isatty():
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(json.dumps(data, separators=(",", ":"), default=str))
