"""Where every command writes: the console for results, stderr for errors, and `fail`, which
every command's refusal goes through. Apart from `gpdpr.cli` so that each room's commands can
use them without importing the whole command tree."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console()
errors = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """One line to stderr, exit code 2: what went wrong and what to do. The message is printed
    as it is: brackets in it (a TOML section, a file name) are not read as Rich markup."""
    errors.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)
