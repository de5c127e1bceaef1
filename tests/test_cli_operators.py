"""The CLI as an operator meets it: a mistyped --home refuses rather than starting an empty
service, `gpdpr init` is how a home is made, a busy port is one clear line, and every command's
help lists its choices and defaults with no `<bool>` placeholders."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gpdpr.cli import WORKFLOW, app

runner = CliRunner()


@pytest.mark.parametrize("command", [["erase"], ["governance", "applications"], ["lake", "show"]])
def test_a_mistyped_home_is_refused_and_not_created(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "gpdpr-hoem"
    done = runner.invoke(app, [*command, "--home", str(typo)])
    assert done.exit_code == 2, done.output
    assert "no service home at" in done.output and f"gpdpr init --home {typo}" in done.output
    assert "no one awaiting erasure" not in done.output
    assert not typo.exists()


def test_init_makes_a_home_the_central_commands_then_accept_and_will_not_make_it_twice(
    tmp_path: Path,
) -> None:
    home = tmp_path / "service"
    made = runner.invoke(app, ["init", "--home", str(home)])
    assert made.exit_code == 0, made.output
    assert (home / "keys" / "pseudonym.key").exists()
    erased = runner.invoke(app, ["erase", "--home", str(home)])
    assert erased.exit_code == 0, erased.output
    again = runner.invoke(app, ["init", "--home", str(home)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_version() -> None:
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output.strip() == f"gpdpr {version('gpdpr')}"


def test_a_busy_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = runner.invoke(app, ["portal", "serve", "--home", str(tmp_path), "--port", str(port)])
    assert done.exit_code == 2
    assert f"cannot serve the portal on 127.0.0.1:{port}" in done.output
    assert "gpdpr portal at" not in done.output and "Traceback" not in done.output


def every_help() -> dict[str, str]:
    """Each command's --help as printed, from one build of the command tree (building it for
    each command would take most of a second apiece)."""
    found: dict[str, str] = {}

    def walk(command: Any, path: list[str], parent: Any) -> None:
        context = typer.Context(command, info_name=path[-1] if path else "gpdpr", parent=parent)
        context.terminal_width = context.max_content_width = 100
        found[" ".join(path)] = command.get_help(context)
        if hasattr(command, "list_commands"):
            for name in command.list_commands(context):
                walk(command.get_command(context, name), [*path, name], context)

    walk(typer.main.get_command(app), [], None)
    return found


def test_every_commands_help_reads_whole_with_choices_and_defaults() -> None:
    helps = every_help()
    assert len(helps) > 50
    problems = [
        f"gpdpr {path}: {line.strip()}"
        for path, shown in helps.items()
        for line in shown.splitlines()
        if "<bool>" in line or line.rstrip().endswith(" .") or "<list[str]>" in line
    ]
    assert problems == []
    assert "<fhir|columnar>" in helps["synth"] and "[default: fhir]" in helps["synth"]
    assert "<duckdb|spark>" in helps["tre run"]
    assert "--as HANDLE" in helps["governance submit"]


def test_the_top_level_help_lists_commands_in_the_order_a_service_is_run() -> None:
    shown = runner.invoke(app, ["--help"], terminal_width=100).output
    listed = [line.split()[0] for line in shown.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == WORKFLOW
