"""Red team, differencing (issue 17): a count released with the target, then the same count
without them, by subtraction says whether they have a diagnosis. Tried as the issue found it:
the measure renamed for the second release; the same researcher under a second agreement; a
colleague from the same organisation under their own; and whether a refusal names the group
that changed. Also midpoint6's 0 beside 3 for a one-person difference. Runs on DuckDB and on
Spark; requests and the two checkers' approvals from the command line.

The attacker pads the count (everyone born before a chosen month is counted too) so that the
count with the target and the count without them are published differently under the rule:
what the guard lets through is then visible. What must hold: the second release is refused (or
publishes exactly what the first did), and a refusal names the files, never a cell or a group."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from governing import COLLEAGUE, LEAD
from redteam import (
    ENGINES,
    Release,
    World,
    csv_rows,
    outputs_of,
    padding,
    release,
    study,
    submit,
    the_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


def counted(
    world: World,
    folder: Path,
    name: str,
    start: str,
    without_target: bool,
    rule: str = "round5",
    group: str = "",
) -> bytes:
    """A measure `name` over one month from `start`: the people with the target's diagnosis or
    born before the padding day (without the target, for the second release), over everyone.
    `group`: a group_by to add, in the language."""
    modulus, residue = (5, 3) if rule == "round5" else (6, 1)
    within = None
    if group:
        sex = world.target.sex
        within = lambda r: r["sex"] == sex  # noqa: E731
    day, _ = padding(world, modulus, residue, within)
    numerator = f'has | (patients.date_of_birth < "{day.isoformat()}")'
    if without_target:
        numerator = f"({numerator}) & ~is_target"
    return study(
        world,
        folder / name / ("without" if without_target else "with"),
        f"""
        measures = Measures()
        measures.configure_disclosure_control("{rule}")
        measures.define_measure(
            "{name}",
            numerator={numerator},
            denominator=patients.exists_for_patient(),
            {group}
            intervals=months(1).starting_on("{start}"),
        )
        """,
    )


def run(world: World, document: bytes, engine: str, handle: str = LEAD, agreement: str = "") -> str:
    outcome = submit(world, document, engine, handle, agreement or world.agreement)
    assert outcome.code == 0, outcome.text
    return str(outcome.value.reference)


def without_labels(body: bytes) -> list[dict[str, str]]:
    """A published table's rows without the measure's name (which the attacker changed)."""
    return [{k: v for k, v in row.items() if k != "measure"} for row in csv_rows(body)]


def assert_refused_or_the_same(first: Release, second: Release) -> None:
    """The second release refused, or publishing exactly the first's numbers."""
    assert first.published, f"the first release did not happen:\n{first.text}"
    if second.published:
        (one,) = first.published.values()
        (two,) = second.published.values()
        assert without_labels(two) == without_labels(one), (
            f"released with and without the target:\n{one.decode()}---\n{two.decode()}{second.text}"
        )
    else:
        assert second.refused, second.text


@pytest.mark.parametrize("engine", ENGINES)
def test_renaming_the_measure_does_not_get_past_the_guard(
    world: World, engine: str, tmp_path: Path
) -> None:
    """Released as `renamed_a` with the target, then as `renamed_b` without them: the cells
    count the same people, whatever they are called."""
    start = "2023-01-01" if engine == "duckdb" else "2023-02-01"
    first_run = run(world, counted(world, tmp_path, "renamed_a", start, False), engine)
    first = release(world, first_run, ["measure_renamed_a.csv"])
    second_run = run(world, counted(world, tmp_path, "renamed_b", start, True), engine)
    second = release(world, second_run, ["measure_renamed_b.csv"])
    assert_refused_or_the_same(first, second)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_second_agreement_of_the_same_researcher_does_not_get_past_the_guard(
    world: World, engine: str, tmp_path: Path
) -> None:
    """With the target under one agreement, without them under another project of the same
    researcher (the issue's 106 and 105): the guard remembers what the person has seen."""
    start = "2023-03-01" if engine == "duckdb" else "2023-04-01"
    first_run = run(world, counted(world, tmp_path, "agreements", start, False), engine)
    first = release(world, first_run, ["measure_agreements.csv"])
    document = counted(world, tmp_path, "agreements", start, True)
    second_run = run(world, document, engine, LEAD, world.second)
    second = release(world, second_run, ["measure_agreements.csv"])
    assert_refused_or_the_same(first, second)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_colleague_from_the_same_organisation_does_not_get_past_the_guard(
    world: World, engine: str, tmp_path: Path
) -> None:
    """With the target released by the lead; without them by a colleague at the same
    university, under the colleague's own project (the lead is not on its team)."""
    start = "2023-05-01" if engine == "duckdb" else "2023-06-01"
    first_run = run(world, counted(world, tmp_path, "colleagues", start, False), engine)
    first = release(world, first_run, ["measure_colleagues.csv"])
    document = counted(world, tmp_path, "colleagues", start, True)
    second_run = run(world, document, engine, COLLEAGUE, world.colleague)
    second = release(world, second_run, ["measure_colleagues.csv"], COLLEAGUE)
    assert_refused_or_the_same(first, second)


GROUP = (
    'group_by={"rt_group": case(when(patients.sex == "%s").then("grp_alpha"), '
    'otherwise="grp_beta")},'
)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_refusal_names_the_files_but_never_the_cells_or_groups(
    world: World, engine: str, tmp_path: Path
) -> None:
    """The same measure, grouped, released with and then without the target: refused, and the
    refusal says a differencing risk was found in the file, never which group, interval or
    row (naming the group that changed would itself tell the attacker the answer)."""
    start = "2023-07-01" if engine == "duckdb" else "2023-08-01"
    group = GROUP % world.target.sex
    first_run = run(world, counted(world, tmp_path, "named", start, False, group=group), engine)
    first = release(world, first_run, ["measure_named.csv"])
    second_run = run(world, counted(world, tmp_path, "named", start, True, group=group), engine)
    second = release(world, second_run, ["measure_named.csv"])
    assert_refused_or_the_same(first, second)
    refusal = second.text
    assert "measure_named.csv" in refusal
    named = [
        word
        for word in ("grp_alpha", "grp_beta", "rt_group", start[:7], r"\brows?\b")
        if re.search(word, refusal)
    ]
    assert named == [], refusal


def zero_or_three(world: World, folder: Path, code: str) -> bytes:
    """midpoint6, grouped by whether a person looks like the target: the numerator is the
    target having `code`, so their group's numerator is 1 or 0."""
    return study(
        world,
        folder / code,
        """
        measures = Measures()
        measures.configure_disclosure_control("midpoint6")
        measures.define_measure(
            "zero_or_three",
            numerator=is_target & has,
            denominator=patients.exists_for_patient(),
            group_by={"looks_like_target": is_target},
            intervals=months(1).starting_on("2023-09-01"),
        )
        """,
        code,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_midpoint6_does_not_publish_0_beside_3_for_one_person(
    world: World, engine: str, tmp_path: Path
) -> None:
    """Under midpoint6 a count of 1 is published as 3 and 0 as 0: one person's diagnosis, in
    one run. For a diagnosis the target has and one they do not, the files (what the researcher
    sees, and would ask to release) are the same, or both runs are refused alike."""
    seen: list[Any] = []
    for code in (world.target.code, world.target.absent_code):
        outcome = submit(world, zero_or_three(world, tmp_path, code), engine)
        seen.append((outcome.code, outcome.text, outputs_of(world, outcome)))
    assert seen[0] == seen[1]
