"""Differencing across everything one party has seen: cells are matched by what they count (a
canonical hash of the query, never a label), against every cell anyone released and every cell
shown to the person or their organisation under any project; a refusal names files only.
On SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from databases import BACKENDS, postgres_url, sqlite_engine
from governing import COLLEAGUE, LEAD, VENDOR, act, agreement_of, bring_to, cast, later
from gpdpr.db import MIGRATIONS
from gpdpr.governance.people import person
from gpdpr.tre.models import SeenCell
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.canonical import Canon
from gpdpr.tre.query.codelists import Codelist
from gpdpr.tre.query.language import (
    INTERVAL,
    Dataset,
    Measures,
    clinical_events,
    definition_of,
    months,
    patients,
)
from gpdpr.tre.release import checking, differencing
from gpdpr.tre.release.differencing import DifferencingRisk, remember, risky
from gpdpr.tre.release.disclosure import (
    RULES,
    THRESHOLD,
    Cell,
    Rule,
    control_measure,
    render_csv,
)
from gpdpr.tre.release.tables import control_table

DIABETES, HBA1C = "44054006", "999791000000106"
JAN = (date(2024, 1, 1), date(2024, 1, 31))


def checks(
    name: str = "hba1c",
    group: str = "imd",
    label: str = "codelists/hba1c.csv",
    codes: tuple[str, ...] = (HBA1C,),
    reorder: bool = False,
    since: str = "2020-01-01",
) -> n.Measure:
    """Women with an HbA1c check each month among adult women diagnosed since `since`, by
    deprivation: written in several ways that count the same people."""
    coded = clinical_events.code.is_in(Codelist(codes, "snomed", label))
    during = clinical_events.effective_date.is_during(INTERVAL)
    adult = patients.age_on(INTERVAL.start_date) >= 18
    woman = patients.sex == "F"
    diagnosed = (
        clinical_events.where(clinical_events.code.is_in(Codelist((DIABETES,), "snomed", label)))
        .where(clinical_events.effective_date.is_on_or_after(since))
        .exists_for_patient()
    )
    measures = Measures()
    measures.define_measure(
        name,
        numerator=clinical_events.where(
            (during & coded) if reorder else (coded & during)
        ).exists_for_patient(),
        denominator=(diagnosed & woman & adult) if reorder else (adult & (woman & diagnosed)),
        group_by={group: patients.imd_decile},
        intervals=months(1).starting_on("2024-01-01"),
    )
    return measures.measures[0]


def raw(
    numerator: int = 12, denominator: int = 40, group: str = "imd", decile: int = 3
) -> pa.Table:
    return pa.table(
        {
            "interval_start": pa.array([JAN[0]], pa.date32()),
            "interval_end": pa.array([JAN[1]], pa.date32()),
            group: pa.array([decile], pa.int64()),
            "numerator": pa.array([numerator], pa.int64()),
            "denominator": pa.array([denominator], pa.int64()),
        }
    )


def keys(measure: n.Measure, group: str = "imd", decile: int = 3) -> list[str]:
    _, cells = control_measure(raw(group=group, decile=decile), measure, "m.csv")
    return [c.key for c in cells]


# --- keys: what a cell counts, not what it is called ------------------------------------------


def test_renaming_the_measure_groups_codelist_or_reordering_conditions_keeps_the_key() -> None:
    original = keys(checks())
    assert keys(checks(name="checks_in_women")) == original
    assert keys(checks(group="deprivation"), group="deprivation") == original
    assert keys(checks(label="my-own-copy.csv")) == original
    assert keys(checks(reorder=True)) == original


def test_changing_a_code_a_date_or_a_group_value_changes_the_key() -> None:
    numerator, denominator = keys(checks())
    more_codes = keys(checks(codes=tuple(sorted((HBA1C, DIABETES)))))
    assert more_codes[0] != numerator and more_codes[1] == denominator  # only the numerator
    later_since = keys(checks(since="2020-01-02"))
    assert later_since[0] != numerator and later_since[1] != denominator
    assert keys(checks(), decile=4)[1] != denominator


def test_where_after_where_is_one_where_with_both_conditions() -> None:
    events = clinical_events
    twice = events.where(events.category == "condition").where(events.value > 3.0)
    once = events.where((events.value > 3.0) & (events.category == "condition"))
    canon = Canon()
    assert canon.of(twice.count_for_patient().node) == canon.of(once.count_for_patient().node)


def test_a_table_and_a_measure_that_count_the_same_people_share_a_key() -> None:
    """A table of adult women on 1 January by deprivation, and a measure's January
    denominator of adult women on its interval's start by deprivation."""
    dataset = Dataset()
    dataset.define_population((patients.sex == "F") & (patients.age_on("2024-01-01") >= 18))
    dataset.deprivation = patients.imd_decile
    dataset.add_table("women", by=["deprivation"])
    definition = definition_of(dataset, None)
    people = pa.table(
        {"patient_id": [f"p{i}" for i in range(40)], "deprivation": pa.array([3] * 40, pa.int64())}
    )
    _, table_cells = control_table(people, definition, definition.tables[0], "t.csv")
    measures = Measures()
    measures.define_measure(
        "anything",
        numerator=patients.imd_decile <= 3,
        denominator=(patients.age_on(INTERVAL.start_date) >= 18) & (patients.sex == "F"),
        group_by={"imd": patients.imd_decile},
        intervals=months(1).starting_on("2024-01-01"),
    )
    _, measure_cells = control_measure(raw(), measures.measures[0], "m.csv")
    assert table_cells[0].key == measure_cells[1].key


# --- the rule ---------------------------------------------------------------------------------


def cell(raw: int, released: bool = True, key: str = "k" * 64, file: str = "new.csv") -> Cell:
    status = "rounded" if released else "suppressed"
    return Cell(file, 1 if released else None, "patients", key, raw, released, status, "why")


@pytest.mark.parametrize("difference", range(1, THRESHOLD + 1))
def test_counts_one_to_seven_apart_with_either_published_are_a_risk(difference: int) -> None:
    seen = {"k" * 64: {(100, True)}}
    assert risky([cell(100 + difference)], seen) == {"new.csv"}
    assert risky([cell(100 + difference, released=False)], seen) == {"new.csv"}
    assert risky([cell(100 + difference)], {"k" * 64: {(100, False)}}) == {"new.csv"}
    assert risky([cell(100), cell(100 + difference, file="other.csv")], {}) == {
        "new.csv",
        "other.csv",
    }


def test_a_published_eight_beside_a_suppressed_seven_and_midpoint6_zero_beside_three() -> None:
    assert risky([cell(7, released=False)], {"k" * 64: {(8, True)}}) == {"new.csv"}
    assert risky([cell(0)], {"k" * 64: {(1, True)}}) == {"new.csv"}  # 0 beside a 3


@pytest.mark.parametrize(
    ("new", "seen"),
    [
        (cell(30), {(30, True)}),  # equal counts reveal nobody
        (cell(30), {(22, True)}),  # eight apart: more than a small group
        (cell(5, released=False), {(3, False)}),  # neither published anything
        (cell(30, key="j" * 64), {(27, True)}),  # another count
    ],
)
def test_what_reveals_nobody_is_no_risk(new: Cell, seen: set[tuple[int, bool]]) -> None:
    assert risky([new], {"k" * 64: seen}) == set()


# --- against the database ---------------------------------------------------------------------


def new_run(engine: sa.Engine, dsa: str, by: str = LEAD) -> int:
    started = later(0)
    made = act(
        engine,
        lambda s: checking.record_run(
            s, by, dsa, "{}", "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            7, "duckdb", "round5", "succeeded", "", {}, started, started,
        ),
    )  # fmt: skip
    return made.id


def person_id(engine: sa.Engine, handle: str) -> int:
    return act(engine, lambda s: person(s, handle).id)


def check(engine: sa.Engine, handle: str, cells: list[Cell]) -> None:
    act(engine, lambda s: differencing.check(s, person_id(engine, handle), cells))


def show(engine: sa.Engine, handle: str, run: int, cells: list[Cell], released: bool) -> None:
    act(engine, lambda s: remember(s, person_id(engine, handle), run, cells, released))


def measure_cells(name: str, numerator: int, denominator: int, rule: Rule = "round5") -> list[Cell]:
    cells: list[Cell]
    _, cells = control_measure(
        raw(numerator, denominator), checks(name), f"measure_{name}.csv", rule
    )
    return cells


def test_what_a_colleague_was_shown_counts_and_another_organisation_only_once_released(
    gov: sa.Engine,
) -> None:
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    run = new_run(gov, dsa)
    show(gov, LEAD, run, measure_cells("hba", 20, 40), released=False)
    one_more = measure_cells("hba", 21, 41)
    for handle in (LEAD, COLLEAGUE):  # the same organisation (Leeds)
        with pytest.raises(DifferencingRisk):
            check(gov, handle, one_more)
    check(gov, VENDOR, one_more)  # another organisation: shown nothing, nothing released
    show(gov, LEAD, run, measure_cells("hba", 20, 40), released=True)
    with pytest.raises(DifferencingRisk):
        check(gov, VENDOR, one_more)  # released: everyone has seen it
    check(gov, VENDOR, measure_cells("hba", 20, 40))  # the same counts reveal nobody


def test_a_release_is_set_beside_what_anyone_was_shown(gov: sa.Engine) -> None:
    """What is released, everyone sees: a release one person fewer than a count another
    organisation was shown inside the environment would give that organisation the person, so
    it is refused, though the releasing researcher never saw that count themselves."""
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    show(gov, LEAD, new_run(gov, dsa), measure_cells("flu", 30, 101), released=False)
    fewer = measure_cells("flu", 30, 100)
    check(gov, VENDOR, fewer)  # to be shown to VENDOR's organisation only: nothing near it
    with pytest.raises(DifferencingRisk):
        act(
            gov,
            lambda s: differencing.check(s, person_id(gov, VENDOR), fewer, for_release=True),
        )


def test_two_agreements_of_one_person_and_a_renamed_measure_are_one_history(
    gov: sa.Engine,
) -> None:
    first = agreement_of(gov, bring_to(gov, "agreement_active"))
    second = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert first and second and first != second
    show(gov, LEAD, new_run(gov, first), measure_cells("hba", 20, 106), released=False)
    # Under the other agreement, the measure renamed, one person fewer in the denominator.
    with pytest.raises(DifferencingRisk) as refused:
        check(gov, LEAD, measure_cells("renamed", 20, 105))
    assert refused.value.files == ("measure_renamed.csv",)


def test_the_refusal_names_the_files_and_nothing_from_the_cells(gov: sa.Engine) -> None:
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    _, earlier = control_measure(raw(1234, 4321, decile=7), checks(), "measure_hba.csv")
    show(gov, LEAD, new_run(gov, dsa), earlier, released=True)
    _, now = control_measure(raw(1233, 4320, decile=7), checks("target"), "measure_target.csv")
    with pytest.raises(DifferencingRisk) as refused:
        check(gov, VENDOR, now)
    message = str(refused.value)
    assert "measure_target.csv" in message and "differencing risk" in message
    without_file = message.replace("measure_target.csv", "")
    assert not re.search(r"\d", without_file), message  # no count, row, group value or key
    for word in ("imd", "numerator", "denominator", "hba", "row", "checks"):
        assert word not in without_file


def test_remembering_twice_keeps_one_copy_and_many_keys_are_looked_up_in_batches(
    gov: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsa = agreement_of(gov, bring_to(gov, "agreement_active"))
    assert dsa
    run = new_run(gov, dsa)
    cells = [cell(100 + i, key=f"{i:064x}", file="big.csv") for i in range(50)]
    show(gov, LEAD, run, cells, released=False)
    show(gov, LEAD, run, cells, released=False)
    with Session(gov) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(SeenCell)) == 50
    monkeypatch.setattr(differencing, "BATCH", 7)
    check(gov, LEAD, [cell(100 + i, key=f"{i:064x}") for i in range(50)])
    changed = [cell(100 + i + (i == 43), key=f"{i:064x}") for i in range(50)]
    with pytest.raises(DifferencingRisk):
        check(gov, LEAD, changed)


# --- the planted person -----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 25), min_size=1, max_size=6),
    st.lists(st.integers(0, 25), min_size=1, max_size=6),
    st.integers(0, 5),
    st.booleans(),
    st.sampled_from(RULES),
)
def test_removing_a_planted_person_changes_nothing_published_unless_it_is_refused(
    denominators: list[int], numerators: list[int], at: int, in_numerator: bool, rule: Rule
) -> None:
    """Two runs of one measure, with and without one person (in the denominator of one group,
    and perhaps its numerator): either every published file is the same, or the second run's
    cells are refused beside the first's."""
    size = min(len(denominators), len(numerators))
    dens = [max(d, 1) for d in denominators[:size]]
    nums = [min(m, d) for m, d in zip(numerators[:size], dens, strict=True)]
    at = at % size
    without_dens = [d - (i == at) for i, d in enumerate(dens)]
    # in the numerator too when asked, or when everyone of the group is
    planted = in_numerator or nums[at] == dens[at]
    without_nums = [m - (i == at and planted and m > 0) for i, m in enumerate(nums)]
    measure = checks()

    def publish(ns: list[int], ds: list[int]) -> tuple[bytes, list[Cell]]:
        table = pa.table(
            {
                "interval_start": pa.array([JAN[0]] * size, pa.date32()),
                "interval_end": pa.array([JAN[1]] * size, pa.date32()),
                "imd": pa.array(range(1, size + 1), pa.int64()),
                "numerator": pa.array(ns, pa.int64()),
                "denominator": pa.array(ds, pa.int64()),
            }
        ).filter(pa.array([d > 0 for d in ds]))  # an engine gives no row to an empty group
        controlled, cells = control_measure(table, measure, "m.csv", rule)
        return render_csv(controlled), cells

    first, first_cells = publish(nums, dens)
    second, second_cells = publish(without_nums, without_dens)
    if first != second:
        assert risky(second_cells, as_seen(first_cells)), (nums, dens, at)


def as_seen(cells: list[Cell]) -> dict[str, set[tuple[int, bool]]]:
    seen: dict[str, set[tuple[int, bool]]] = {}
    for c in cells:
        seen.setdefault(c.key, set()).add((c.raw, c.released))
    return seen


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=5),
    st.integers(0, 4),
    st.floats(0, 1000, allow_nan=False),
    st.sampled_from(RULES),
)
def test_removing_a_planted_person_from_a_table_changes_nothing_unless_refused(
    sizes: list[int], at: int, value: float, rule: Rule
) -> None:
    """The same for a table with statistics: a person with any value, in any group."""
    dataset = Dataset()
    dataset.define_population(patients.sex == "F")
    dataset.region = patients.region_code
    dataset.score = patients.imd_decile + 0.5
    dataset.add_table("t", by=["region"], statistics={"score": ["mean", "median", "sd"]})
    definition = definition_of(dataset, None)
    at = at % len(sizes)

    def publish(planted: bool) -> tuple[bytes, list[Cell]]:
        regions = [f"R{g}" for g, size in enumerate(sizes) for _ in range(size)]
        scores = [float(j % 7) for size in sizes for j in range(size)]
        if planted:
            regions.append(f"R{at}")
            scores.append(value)
        people = pa.table(
            {
                "patient_id": [f"p{i}" for i in range(len(regions))],
                "region": pa.array(regions, pa.string()),
                "score": pa.array(scores, pa.float64()),
            }
        )
        table, cells = control_table(people, definition, definition.tables[0], "t.csv", rule)
        return render_csv(table), cells

    first, first_cells = publish(planted=True)
    second, second_cells = publish(planted=False)
    if first != second:
        assert risky(second_cells, as_seen(first_cells))


@pytest.fixture(params=BACKENDS)
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A database at migration 0005, as it was before differencing by key, with people in it."""
    if request.param == "sqlite":
        from gpdpr.db import _sqlite_begin, _sqlite_connect

        made = sa.create_engine(f"sqlite:///{tmp_path / 'central.db'}")
        sa.event.listen(made, "connect", _sqlite_connect)
        sa.event.listen(made, "begin", _sqlite_begin)
        yield made
        made.dispose()
    else:
        with postgres_url() as url:
            made = sa.create_engine(url)
            yield made
            made.dispose()


def migrate(engine: sa.Engine, to: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, to)


def test_the_migration_upgrades_an_existing_database_and_back(old_database: sa.Engine) -> None:
    migrate(old_database, "0005_portal")
    cast(old_database)
    migrate(old_database, "head")
    tables = sa.inspect(old_database).get_table_names()
    assert "tre_seen_cells" in tables and "tre_released_cells" not in tables
    indexes = {i["name"] for i in sa.inspect(old_database).get_indexes("tre_seen_cells")}
    assert "ix_tre_seen_cells_key" in indexes
    dsa = agreement_of(old_database, bring_to(old_database, "agreement_active"))
    assert dsa
    show(old_database, LEAD, new_run(old_database, dsa), [cell(10)], released=True)
    migrate(old_database, "0005_portal", down=True)
    assert "tre_released_cells" in sa.inspect(old_database).get_table_names()
    migrate(old_database, "head")
    with Session(old_database) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(SeenCell)) == 0


def test_a_fresh_database_opens_at_the_new_head(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path)
    assert "tre_seen_cells" in sa.inspect(engine).get_table_names()
    engine.dispose()
