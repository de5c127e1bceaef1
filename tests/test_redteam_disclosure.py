"""Red team, disclosure control (issue 17): outputs built so that, once rounded and redacted,
they still give the target away. Weighted numerators (one person counted 10 times, or 5 times a
day count), statistics over a 0/1 variable or a variable that is zero for all but the target, a
median that is one person's value, and aggregate tables (and measures) grouped by a date. Each on
DuckDB and on Spark, under an agreement, through the library (as the portal runs it) and, for the
weighted numerators, through `gpdpr tre submit` too.

The hostile parts are written into the JSON by hand (a definition the language would refuse on
the researcher's machine is still sent), so the service's own checks are what is tested."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from redteam import (
    ENGINES,
    Outcome,
    State,
    World,
    assert_harmless,
    cli_submit,
    csv_rows,
    edited,
    node_of,
    outputs_of,
    study,
    submit,
    the_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


# ---- weighted numerators ---------------------------------------------------------------------

# The numerator is first a true/false one (which the language accepts); the attacker then points
# it at a dataset variable that weights the target: by 10 when they have the diagnosis, or by 5
# times the number of days from 2000-01-01 to it (published rounded to 5, that is the day).
WEIGHTS = {
    "by-ten": "case(when(is_target & has).then(10), otherwise=0)",
    "by-a-day-count": 'case(when(is_target).then(first_date.days_until("2000-01-01") * -5), '
    "otherwise=0)",
}


def weighted(world: World, folder: Path, weight: str) -> bytes:
    innocent = study(
        world,
        folder,
        f"""
        dataset = Dataset()
        dataset.define_population(patients.exists_for_patient())
        dataset.sex = patients.sex
        dataset.weight = {weight}
        dataset.add_table("by_sex", by=["sex"])
        measures = Measures()
        measures.define_measure(
            "weighted",
            numerator=has,
            denominator=patients.exists_for_patient(),
            group_by={{"sex": patients.sex}},
            intervals=months(1).starting_on("2024-01-01"),
        )
        """,
    )

    def weigh(d: dict[str, Any]) -> None:
        d["measures"][0]["numerator"] = node_of(d, "weight")

    return edited(innocent, weigh)


def assert_refused_and_silent(world: World, outcome: Outcome, before: State) -> None:
    published = b"".join(outputs_of(world, outcome).values()).decode()
    assert outcome.refused, f"not refused; it published:\n{published}{outcome.text}"
    assert "numerator" in outcome.text
    assert_harmless(world, outcome, before)


@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_weighted_numerator_is_refused(
    world: World, engine: str, weight: str, tmp_path: Path
) -> None:
    """A measure's numerator that counts the target 10 times (or 5 times a day count) would
    pass redaction and rounding unchanged and publish their diagnosis (or its date): refused,
    saying the numerator is the problem, and nothing about the target anywhere."""
    document = weighted(world, tmp_path, WEIGHTS[weight])
    before = world.state()
    assert_refused_and_silent(world, submit(world, document, engine), before)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_weighted_numerator_is_refused_by_gpdpr_tre_submit(
    world: World, engine: str, tmp_path: Path
) -> None:
    """The same, sent with `gpdpr tre submit`: exit 2, one clear line."""
    document = weighted(world, tmp_path, WEIGHTS["by-a-day-count"])
    before = world.state()
    outcome = cli_submit(world, document, engine, tmp_path)
    assert_refused_and_silent(world, outcome, before)


# ---- statistics ------------------------------------------------------------------------------

LATER = date(2030, 1, 1)  # the day counts below run from a diagnosis to this day


def truth(world: World) -> dict[str, dict[str, Any]]:
    """For each sex: its size in the project's view, how many have the target's code, and the
    values of `value` (the day count for the target, 0 for everyone else)."""
    assert world.population is not None
    out: dict[str, dict[str, Any]] = {}
    for row in world.population.to_pylist():
        group = out.setdefault(row["sex"], {"n": 0, "k": 0})
        group["n"] += 1
        group["k"] += int(row["has_code"])
    return out


def statistics_study(
    world: World, folder: Path, statistics: list[list[str]], since: str = "has"
) -> bytes:
    """By sex, over everyone in the view: `flag` 1 for those with the target's diagnosis (0/1),
    `value` the target's day count and 0 for everyone else, `since` the day count for everyone
    `since` holds for (by default, those with the diagnosis). The statistics are added to the
    table by hand."""
    innocent = study(
        world,
        folder,
        f"""
        days = first_date.days_until("2030-01-01")
        dataset = Dataset()
        dataset.define_population(patients.exists_for_patient())
        dataset.sex = patients.sex
        dataset.flag = case(when(has).then(1), otherwise=0)
        dataset.value = case(when(is_target).then(days), otherwise=0)
        dataset.since = case(when({since}).then(days))
        dataset.add_table("stats_by_sex", by=["sex"])
        """,
    )
    return edited(innocent, lambda d: d["tables"][0].update(statistics=statistics))


def published_statistics(files: dict[str, bytes], variable: str) -> list[tuple[str, str, float]]:
    """(group, statistic column, value) of every statistic of `variable` published."""
    out = []
    for body in files.values():
        for row in csv_rows(body):
            for column, value in row.items():
                if column.startswith(f"{variable}_") and value not in ("", None):
                    out.append((row.get("sex", ""), column, float(value)))
    return out


def window(files: dict[str, bytes], sex: str) -> range:
    """The group sizes an attacker cannot rule out from the published count of `sex`."""
    for body in files.values():
        for row in csv_rows(body):
            if row.get("sex") == sex and row.get("patients"):
                count = int(row["patients"])
                return range(max(1, count - 2), count + 3)
    return range(0)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_mean_and_sd_of_a_0_1_variable_give_back_neither_the_count_nor_the_group_size(
    world: World, engine: str, tmp_path: Path
) -> None:
    """The mean of a 0/1 variable is a count over n, and with its SD gives n itself: published
    beside a rounded count they gave back the exact group size and how many have the target's
    diagnosis. What must hold: neither the exact mean nor the exact SD is published, and the
    published mean and SD together do not solve to the group's size."""
    document = statistics_study(world, tmp_path, [["flag", "mean"], ["flag", "sd"]])
    before = world.state()
    outcome = submit(world, document, engine)
    assert_harmless(world, outcome, before)
    recovered = []
    published: dict[tuple[str, str], float] = {}
    for sex, column, value in published_statistics(outputs_of(world, outcome), "flag"):
        n, k = truth(world)[sex]["n"], truth(world)[sex]["k"]
        exact = {"flag_mean": k / n, "flag_sd": math.sqrt(k * (n - k) / (n * (n - 1)))}
        if column in exact and math.isclose(value, exact[column], rel_tol=1e-9):
            recovered.append(f"{sex}: the exact {column}, {value}")
        published[(sex, column)] = value
    for sex, group in truth(world).items():
        p, sd = published.get((sex, "flag_mean")), published.get((sex, "flag_sd"))
        if p is None or sd is None or not 0 < p < 1:
            continue
        ratio = sd * sd / (p * (1 - p))  # n / (n - 1)
        if ratio > 1 and abs(ratio / (ratio - 1) - group["n"]) < 0.01:
            recovered.append(f"{sex}: the group size {group['n']} from the mean and SD")
    assert not recovered, "\n".join(recovered)


@pytest.mark.parametrize("engine", ENGINES)
def test_statistics_of_a_value_only_the_target_has_do_not_give_it_back(
    world: World, engine: str, tmp_path: Path
) -> None:
    """`value` is zero for all but the target, whose value is the days from their diagnosis to
    2030: its mean is that over n, its SD that over the square root of n. No published mean or
    SD, times any size the published count allows, may give back the target's value."""
    document = statistics_study(world, tmp_path, [["value", "mean"], ["value", "sd"]])
    before = world.state()
    outcome = submit(world, document, engine)
    assert_harmless(world, outcome, before)
    files = outputs_of(world, outcome)
    target = world.target
    secret = (LATER - target.first_date).days
    recovered = []
    for sex, column, value in published_statistics(files, "value"):
        if sex != target.sex:
            continue
        sizes = list(window(files, sex)) or [truth(world)[sex]["n"]]
        for m in sizes:
            guess = value * m if column == "value_mean" else value * math.sqrt(m)
            if abs(guess - secret) < 0.5:
                recovered.append(f"{column} {value} with {m} people gives {secret}")
    assert not recovered, "\n".join(recovered)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_published_median_is_never_one_persons_own_value(
    world: World, engine: str, tmp_path: Path
) -> None:
    """A median over an odd number of people is one of them: the days from their diagnosis
    to 2030 (the attacker leaves the target out if that makes their group odd). No published
    median of `since` may be the exact median when that is a value someone in the group has."""
    assert world.population is not None
    sexes = dict(
        zip(
            world.population.column("patient_id").to_pylist(),
            world.population.column("sex").to_pylist(),
            strict=True,
        )
    )
    values: dict[str, list[int]] = {}
    for patient, day in world.firsts.items():
        values.setdefault(sexes[patient], []).append((LATER - day).days)
    since = "has"
    target = world.target
    if len(values[target.sex]) % 2 == 0:
        since = "has & ~is_target"
        values[target.sex].remove((LATER - target.first_date).days)
    document = statistics_study(world, tmp_path, [["since", "median"]], since)
    before = world.state()
    outcome = submit(world, document, engine)
    assert_harmless(world, outcome, before)
    someones = [
        (sex, value)
        for sex, column, value in published_statistics(outputs_of(world, outcome), "since")
        if column == "since_median"
        and value == statistics.median(values[sex])
        and value in values[sex]
    ]
    assert not someones, f"medians that are someone's own value: {someones}"


# ---- row-level tables ------------------------------------------------------------------------


def by_date(world: World, folder: Path, kind: str) -> bytes:
    """Everyone with the target's diagnosis, grouped (by hand) by the day it was first
    recorded: in an aggregate table, or as a measure's group."""
    innocent = study(
        world,
        folder,
        """
        dataset = Dataset()
        dataset.define_population(has)
        dataset.sex = patients.sex
        dataset.first = first_date
        dataset.add_table("by_first_date", by=["sex"])
        measures = Measures()
        measures.define_measure(
            "by_first_date",
            numerator=has,
            denominator=has,
            group_by={"sex": patients.sex},
            intervals=months(1).starting_on("2024-02-01"),
        )
        """,
    )

    def group_by_date(d: dict[str, Any]) -> None:
        if kind == "table":
            d["tables"][0]["by"] = ["first"]
            d["measures"] = []
        else:
            d["measures"][0]["group_by"] = [["first", node_of(d, "first")]]
            d["tables"] = []

    return edited(innocent, group_by_date)


@pytest.mark.parametrize("kind", ["table", "measure"])
@pytest.mark.parametrize("engine", ENGINES)
def test_grouping_by_a_date_publishes_no_row_that_describes_one_person(
    world: World, engine: str, kind: str, tmp_path: Path
) -> None:
    """Grouped by a near-unique value (the day a diagnosis was first recorded), a table has a
    row per person even with its count blank: the rows are the disclosure. Refused, or every
    published row is a group of more than 7 people, with its count."""
    document = by_date(world, tmp_path, kind)
    before = world.state()
    outcome = submit(world, document, engine)
    assert_harmless(world, outcome, before)
    sizes = Counter(world.firsts.values())
    small = []
    for name, body in outputs_of(world, outcome).items():
        for row in csv_rows(body):
            day = row.get("first")
            if day in (None, "", "Total"):
                continue
            count = row.get("patients") or row.get("denominator")
            on = _date(day)
            people = sizes.get(on, 0) if on is not None else 0
            if not count or people <= 7:
                small.append(f"{name}: {day} ({people} people, published {count!r})")
    assert not small, "\n".join(small)


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None
