"""The documentation site cannot rot: it is built here (`mkdocs build --strict`, so a broken link
or a missing page fails), its reference pages are generated from the schema and the language and
must name every table, column and function, every definition on its tutorial runs on dummy data,
every `gpdpr` command it shows exists, and the README still opens with the two commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gpdpr.cli import app
from gpdpr.tre.query import language, schema

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
TWO_COMMANDS = (
    "```sh\n"
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/gpdpr demo\n"
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && "
    "scripts/with-postgres .venv/bin/pytest -n 2\n"
    "```"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    return out


def text_of(page: Path) -> str:
    return re.sub(r"<[^>]+>", " ", page.read_text())


def test_the_site_builds_strictly_with_a_guide_for_each_audience(site: Path) -> None:
    for page in ("patients", "researchers/tutorial", "operators", "panel", "developers"):
        assert (site / page / "index.html").exists(), page


def test_the_tables_page_names_every_table_and_column_with_the_fields_it_needs(
    site: Path,
) -> None:
    shown = text_of(site / "researchers" / "tables" / "index.html")
    for table in schema.TABLES.values():
        assert table.name in shown
        for column in table.columns.values():
            assert column.name in shown and column.description in shown
            assert all(f"{table.lake}.{field}" in shown for field in column.needs)
    assert "gpdpr:tables" not in shown  # the marker was replaced


def test_the_language_page_names_every_public_name_and_method(site: Path) -> None:
    shown = text_of(site / "researchers" / "language" / "index.html")
    for name in language.__all__:
        assert name in shown, name
    for method in ("is_in", "exists_for_patient", "for_patient_on", "age_on", "define_measure"):
        assert f".{method}(" in shown, method
    assert "(no description yet)" not in shown  # every public method says what it does


def tutorial_definitions() -> list[str]:
    page = (DOCS / "researchers" / "tutorial.md").read_text()
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


def test_every_definition_in_the_tutorial_runs_on_dummy_data(tmp_path: Path) -> None:
    definitions = tutorial_definitions()
    assert len(definitions) >= 2
    data = tmp_path / "dummy"  # made once, shared by the runs
    for n, text in enumerate(definitions):
        study = tmp_path / f"step{n}" / "study.py"
        study.parent.mkdir()
        study.write_text(text)
        done = CliRunner().invoke(
            app, ["tre", "run", str(study), "--dummy", "--patients", "300", "--data", str(data)]
        )
        assert done.exit_code == 0, done.output
        assert (study.parent / "output" / "table_adults_by_sex.csv").exists()
    # the measure step makes the file the page says it does
    assert (tmp_path / f"step{len(definitions) - 1}" / "output" / "measure_any_event.csv").exists()


def shown_commands() -> list[list[str]]:
    """Each `gpdpr ...` line in the docs' shell blocks, as far as its command names go."""
    found: list[list[str]] = []
    for page in DOCS.rglob("*.md"):
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                words = line.split()
                if words[:1] != ["gpdpr"]:
                    continue
                named = [w for w in words[1:4] if re.fullmatch(r"[a-z][a-z-]*", w)]
                if named not in found:
                    found.append(named)
    return found


def test_every_gpdpr_command_the_guides_show_exists() -> None:
    commands = shown_commands()
    assert len(commands) >= 10
    root = typer.main.get_command(app)
    for words in commands:
        command: Any = root
        for word in words:
            command = command.get_command(typer.Context(command), word)
            assert command is not None, f"gpdpr {' '.join(words)} is in the docs but no command"


def test_the_readme_opens_with_the_two_commands_and_points_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("# gpdpr\n\n" + TWO_COMMANDS)
    assert "docs/" in readme and "mkdocs" in readme
    assert len(readme.splitlines()) < 80
    assert "DESIGN.md" not in readme  # nothing outside the repository
