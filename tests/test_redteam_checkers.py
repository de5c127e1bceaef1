"""Red team, output checkers (issue 17): a checker from the project's funder approving its
outputs, and a rejected (or returned) file asked for again unchanged, from the same run or from
a new run of the same definition. All from the command line (`gpdpr tre request`, `gpdpr tre
review`), after runs on DuckDB and on Spark.

What must hold: the funder's checker is refused (exit 2, saying why) and their approval counts
for nothing; a file whose exact bytes were rejected or returned cannot be asked for again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from governing import CHECKERS, LEAD
from redteam import (
    ENGINES,
    FUNDER_CHECKER,
    World,
    cli,
    compile_study,
    submit,
    the_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


def run_of(
    world: World, folder: Path, engine: str, name: str, born_before: str = "2100-01-01"
) -> tuple[str, str]:
    """A run of people born before a day, by sex (a table called `name`); its reference and
    its file. A file turned down is refused again under any name, so each case that turns one
    down counts people of its own (its own day)."""
    document = compile_study(
        folder,
        f"""
        dataset = Dataset()
        dataset.define_population(patients.date_of_birth < "{born_before}")
        dataset.sex = patients.sex
        dataset.add_table("{name}", by=["sex"])
        """,
    )
    outcome = submit(world, document, engine)
    assert outcome.code == 0, outcome.text
    return outcome.value.reference, f"table_{name}.csv"


def ask(world: World, run: str, file: str) -> tuple[int, str, str | None]:
    """`gpdpr tre request`: its exit code, its output and the request it made."""
    outcome = cli(world, "tre", "request", run, "--file", file, "--title", "By sex", "--as", LEAD)
    found = re.search(r"(REQ-\d+):", outcome.text)
    return outcome.code, outcome.text, found.group(1) if found and outcome.code == 0 else None


def published(world: World, file: str) -> list[Path]:
    return sorted((world.home / "register" / "releases").glob(f"*/{file}"))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_checker_from_the_projects_funder_cannot_approve(
    world: World, engine: str, tmp_path: Path
) -> None:
    """The funder's checker approves: refused with exit 2, saying they are from the funder;
    after one independent checker's approval nothing is published, after the second it is."""
    run, file = run_of(world, tmp_path, engine, f"funder_{engine}")
    code, text, request = ask(world, run, file)
    assert code == 0 and request, text
    funder = cli(world, "tre", "review", "approve", request, file, "--as", FUNDER_CHECKER)
    assert funder.refused, f"the funder's checker approved:\n{funder.text}"
    assert "fund" in funder.text.lower() or "organisation" in funder.text.lower(), funder.text
    first = cli(world, "tre", "review", "approve", request, file, "--as", CHECKERS[0])
    assert first.code == 0, first.text
    assert published(world, file) == []
    second = cli(world, "tre", "review", "approve", request, file, "--as", CHECKERS[1])
    assert second.code == 0, second.text
    assert len(published(world, file)) == 1


@pytest.mark.parametrize("decision", ["reject", "return"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_rejected_or_returned_file_cannot_be_asked_for_again_unchanged(
    world: World, engine: str, decision: str, tmp_path: Path
) -> None:
    """A checker rejects (or returns) a file; the author asks for the same file again, from the
    same run and from a new run of the same definition (the same bytes): both refused, and the
    file is never published."""
    name = f"{decision}_{engine}"
    day = {"reject": 1990, "return": 1985}[decision] - (10 if engine == "spark" else 0)
    born_before = f"{day}-01-01"
    run, file = run_of(world, tmp_path / "first", engine, name, born_before)
    code, text, request = ask(world, run, file)
    assert code == 0 and request, text
    decided = cli(
        world,
        "tre",
        "review",
        decision,
        request,
        file,
        "--comment",
        "Not this.",
        "--as",
        CHECKERS[0],
    )
    assert decided.code == 0, decided.text
    again, text, _ = ask(world, run, file)
    assert again == 2, f"asked again from {run}:\n{text}"
    rerun, same = run_of(world, tmp_path / "again", engine, name, born_before)
    assert (world.home / "tre" / "runs" / rerun / "outputs" / same).read_bytes() == (
        world.home / "tre" / "runs" / run / "outputs" / file
    ).read_bytes()
    again, text, request = ask(world, rerun, same)
    assert again == 2, f"asked again from a new run {rerun}:\n{text}"
    assert published(world, file) == []
