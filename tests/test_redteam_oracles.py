"""Red team, oracles before any checker (issue 17): what a researcher sees of a real run before
anything is released (its status, its error, its files' rows and bytes, the files themselves)
must not answer a yes/no question about one person. Each attack runs twice, asking about a
diagnosis the target has and then one they do not, on DuckDB and on Spark, through the library
and through `gpdpr tre submit`: what the researcher sees must be the same both times."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redteam import (
    ENGINES,
    Outcome,
    World,
    cli_submit,
    normalised,
    outputs_of,
    study,
    submit,
    the_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


# Each question about the target, as a definition: asked with `has` meaning "has the
# target's diagnosis" (true of the target) and then "has another" (false).
QUESTIONS = {
    # The population is the target if they have it, and nobody otherwise: an empty population
    # was an error of its own.
    "empty-population": """
        dataset = Dataset()
        dataset.define_population(is_target & has)
        dataset.sex = patients.sex
        dataset.add_table("asked", by=["sex"])
        """,
    # Everyone of the other sex, and the target if they have it: the target's sex is a row of
    # its own (redacted, but there) or none.
    "a-row-or-none": """
        dataset = Dataset()
        dataset.define_population(~is_target_sex | (is_target & has))
        dataset.sex = patients.sex
        dataset.add_table("asked", by=["sex"])
        """,
    # An error only the target's data causes (one more than the largest whole number), one of
    # the red team's own: the run fails, or it does not.
    "an-error-or-none": """
        dataset = Dataset()
        dataset.define_population(patients.exists_for_patient())
        dataset.sex = patients.sex
        dataset.boom = case(when(is_target & has).then(9223372036854775807), otherwise=0) + 1
        dataset.add_table("asked", by=["sex"])
        """,
    # The same as a measure's groups.
    "a-measure-row-or-none": """
        measures = Measures()
        measures.define_measure(
            "asked",
            numerator=is_target & has,
            denominator=~is_target_sex | (is_target & has),
            group_by={"sex": patients.sex},
            intervals=months(1).starting_on("2024-03-01"),
        )
        """,
}


def asked(world: World, folder: Path, question: str, code: str) -> bytes:
    target_sex = f'is_target_sex = patients.sex == "{world.target.sex}"\n'
    return study(world, folder / code, target_sex + textwrap.dedent(QUESTIONS[question]), code)


def seen(world: World, outcome: Outcome) -> dict[str, Any]:
    """Everything the researcher is shown of a run before release: whether it ran, what it
    said, and each file with its rows, bytes and contents."""
    record = outcome.value
    return {
        "ran": outcome.code,
        "said": normalised(outcome.text),
        "files": {name: (about["rows"], about["bytes"]) for name, about in (record.outputs.items())}
        if record is not None
        else {},
        "contents": outputs_of(world, outcome),
    }


@pytest.mark.parametrize("question", QUESTIONS)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_shows_the_same_whether_or_not_the_target_has_the_diagnosis(
    world: World, engine: str, question: str, tmp_path: Path
) -> None:
    """The same question about a diagnosis the target has and one they do not: the same status,
    the same message, the same files with the same rows, bytes and contents (or both refused
    alike). Otherwise the run itself, before any checker, says whether the target has it."""
    target = world.target
    shown, harms = [], []
    for code in (target.code, target.absent_code):
        before = world.state()
        outcome = submit(world, asked(world, tmp_path, question, code), engine)
        shown.append(seen(world, outcome))
        harms += world.harm(outcome, before)
    assert shown[0] == shown[1]
    assert not harms, "\n".join(harms)


@pytest.mark.parametrize("engine", ENGINES)
def test_gpdpr_tre_submit_prints_the_same_whether_or_not_the_target_has_the_diagnosis(
    world: World, engine: str, tmp_path: Path
) -> None:
    """`gpdpr tre submit` prints a run's status and each file's rows and bytes: for the two
    questions (a population that is the target or nobody; a row that is there or not) what it
    prints is the same for a diagnosis the target has and one they do not."""
    target = world.target
    for question in ("empty-population", "a-row-or-none"):
        printed, harms = [], []
        for code in (target.code, target.absent_code):
            before = world.state()
            outcome = cli_submit(world, asked(world, tmp_path, question, code), engine, tmp_path)
            printed.append((outcome.code, normalised(outcome.text)))
            harms += world.harm(outcome, before)
        assert printed[0] == printed[1], question
        assert not harms, "\n".join(harms)
