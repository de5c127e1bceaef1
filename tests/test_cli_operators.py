"""The CLI as an operator meets it: a mistyped --home refuses rather than starting an empty
service, `gpdpr init` is how a home is made, a busy port is one clear line, and every command's
help lists its choices and defaults with no `<bool>` placeholders."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path

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
    assert (home / "keys" / "collection.key").exists()
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


def every_command() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(command: typer.core.TyperCommand | typer.core.TyperGroup, path: list[str]) -> None:
        found.append(path)
        if isinstance(command, typer.core.TyperGroup):
            context = typer.Context(command)
            for name in command.list_commands(context):
                walk(command.get_command(context, name), [*path, name])  # type: ignore[arg-type]

    walk(typer.main.get_command(app), [])  # type: ignore[arg-type]
    return found


def test_every_commands_help_reads_whole_with_choices_and_defaults() -> None:
    commands = every_command()
    assert len(commands) > 50
    problems = []
    for path in commands:
        shown = runner.invoke(app, [*path, "--help"], terminal_width=100).output
        for line in shown.splitlines():
            if "<bool>" in line or line.rstrip().endswith(" .") or "<list[str]>" in line:
                problems.append(f"gpdpr {' '.join(path)}: {line.strip()}")
    assert problems == []
    synth = runner.invoke(app, ["synth", "--help"], terminal_width=100).output
    assert "<fhir|columnar>" in synth and "[default: fhir]" in synth
    run = runner.invoke(app, ["tre", "run", "--help"], terminal_width=100).output
    assert "<duckdb|spark>" in run


def test_the_top_level_help_lists_commands_in_the_order_a_service_is_run() -> None:
    shown = runner.invoke(app, ["--help"], terminal_width=100).output
    listed = [line.split()[0] for line in shown.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == WORKFLOW
