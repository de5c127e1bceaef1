"""Red team, scope (issue 17): reading what the agreement does not grant without naming a column
(`medications.count_for_patient()`, `referrals.exists_for_patient()`, ...) or through a column
that "needs" no field (`practice`). The agreement here grants patients' sex, month of birth and
decile, registration dates and clinical events' codes and dates: no medicines, referrals,
appointments, allergies, immunisations, nor practice.

What must hold, on DuckDB and on Spark, through the library and `gpdpr tre submit`: refused,
naming what is outside the agreement, before any data is read (the lake is never opened for
reading), and the run recorded as refused, not as having read anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from redteam import (
    ENGINES,
    Outcome,
    World,
    assert_harmless,
    cli_submit,
    compile_study,
    submit,
    the_world,
)

# What each reads that the agreement does not grant, as a dataset variable (or a measure's
# group), and the word the refusal must name.
READS = {
    "medications-count": ("medications.count_for_patient() > 0", "medications"),
    "referrals-exist": ("referrals.exists_for_patient()", "referrals"),
    "appointments-count": ("appointments.count_for_patient() > 0", "appointments"),
    "allergies-exist": ("allergies.exists_for_patient()", "allergies"),
    "immunisations-exist": ("immunisations.exists_for_patient()", "immunisations"),
    "practice": ('practice_registrations.for_patient_on("2025-01-01").practice', "practice"),
    "practice-group": (
        "practice_registrations.for_patient_on(INTERVAL.start_date).practice",
        "practice",
    ),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


class DataRead(Exception):
    """Raised by the lake when anything reads it during a test that must read nothing."""


@pytest.fixture
def lake_closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of the lake's data (a snapshot of it) is refused and noted."""
    from gpdpr.lake.store import Lake

    reads: list[str] = []

    def no_reading(self: Lake, *args: object, **kwargs: object) -> None:
        reads.append("a snapshot of the lake")
        raise DataRead("the lake was read for a definition outside the agreement")

    monkeypatch.setattr(Lake, "snapshot", no_reading)
    return reads


def outside(folder: Path, read: str) -> bytes:
    """Adults by sex and by `read` (a measure's group if it uses INTERVAL), published."""
    if "INTERVAL" in read:
        return compile_study(
            folder,
            f"""
            measures = Measures()
            measures.define_measure(
                "outside",
                numerator=patients.sex == "F",
                denominator=patients.exists_for_patient(),
                group_by={{"read": {read}}},
                intervals=months(1).starting_on("2024-05-01"),
            )
            """,
        )
    return compile_study(
        folder,
        f"""
        dataset = Dataset()
        dataset.define_population(patients.exists_for_patient())
        dataset.sex = patients.sex
        dataset.read = {read}
        dataset.add_table("outside", by=["sex", "read"])
        """,
    )


def assert_refused_before_reading(
    world: World, outcome: Outcome, before: object, reads: list[str], word: str
) -> None:
    assert reads == [], f"data was read: {reads}\n{outcome.text}"
    assert outcome.refused, f"not refused:\n{outcome.text}"
    assert word in outcome.text
    assert_harmless(world, outcome, before)  # type: ignore[arg-type]


@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("engine", ENGINES)
def test_reading_what_the_agreement_does_not_grant_is_refused_before_any_data_is_read(
    world: World, engine: str, read: str, tmp_path: Path, lake_closed: list[str]
) -> None:
    """A table read without naming a column, or a column that needs no field, is still a read:
    refused naming it, with the lake never read."""
    text, word = READS[read]
    document = outside(tmp_path, text)
    before = world.state()
    outcome = submit(world, document, engine)
    assert_refused_before_reading(world, outcome, before, lake_closed, word)


@pytest.mark.parametrize("read", ["medications-count", "practice"])
@pytest.mark.parametrize("engine", ENGINES)
def test_gpdpr_tre_submit_refuses_them_too(
    world: World, engine: str, read: str, tmp_path: Path, lake_closed: list[str]
) -> None:
    """The same through `gpdpr tre submit`: exit 2, naming what is outside the agreement."""
    text, word = READS[read]
    document = outside(tmp_path, text)
    before = world.state()
    outcome = cli_submit(world, document, engine, tmp_path)
    assert_refused_before_reading(world, outcome, before, lake_closed, word)
