"""The definition -> engine boundary, attacked: names never become SQL, values are only ever
literals, SQL the compiler would not write is refused before it runs, the engines' sandboxes
refuse files and second statements even when SQL gets through, scope covers every read, and a
definition's cost is bounded (checked in time linear in its size, refused over the limits).

Tests taking the `engine` fixture run on DuckDB and on Spark (tests/conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gpdpr.errors import UserError
from gpdpr.governance.form import Item, check_items
from gpdpr.spec import shipped
from gpdpr.tre import views
from gpdpr.tre.engines import guard, sql
from gpdpr.tre.engines.base import Engine, RunFailed, keyed
from gpdpr.tre.engines.duckdb import DuckDBEngine, Sandbox
from gpdpr.tre.query import limits, serial
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.language import (
    INTERVAL,
    Dataset,
    Measures,
    case,
    clinical_events,
    definition_of,
    medications,
    months,
    patients,
    practice_registrations,
    when,
)
from gpdpr.tre.query.names import check_name
from gpdpr.tre.query.schema import TABLES
from tre_data import by_id, column, make_views, run, through_json
from tre_data import engine as engine_named

HOSTILE = "x\" from v_patients; copy (select * from v_patients) to '/tmp/out.csv'; --"
NASTY = [
    "O'Neil",
    "''",
    "\\",
    "\\'",
    "back\\slash'",
    "${env:HOME}",
    "${spark.app.name}",
    "--",
    "/* no */",
    ";",
    "'; select 1; --",
    "\u2028",
    "line\nbreak\r",
    "tab\there",
    "Ŵales 🏴",
    "%_",
    "\\u0041",
    "\\n",
    "$$dollar$$",
    '"quoted"',
    "`tick`",
]
P = n.SelectTable("patients")
E = n.SelectTable("clinical_events")
PEOPLE = make_views(
    patients=[
        {"patient_id": "p1", "sex": "F", "imd_decile": 3, "date_of_birth": date(1980, 1, 1)},
        {"patient_id": "p2", "sex": "M", "imd_decile": 8, "date_of_birth": date(1990, 6, 1)},
    ],
    clinical_events=[
        {"patient_id": "p1", "code": "44054006", "effective_date": date(2024, 1, 5), "value": 2.0}
    ],
)


def everyone() -> Dataset:
    made = Dataset()
    made.define_population(patients.exists_for_patient())
    made.sex = patients.sex
    made.add_table("by_sex", by=["sex"])
    return made


def document(definition: n.Definition) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(serial.to_json(definition))
    return loaded


def canary(folder: Path) -> tuple[Path, bytes]:
    """A file outside any view, holding bytes found nowhere else."""
    secret = secrets.token_hex(16).encode()
    path = folder / "canary.csv"
    path.write_bytes(b"secret\n" + secret + b"\n")
    return path, secret


def nowhere(secret: bytes, *found: object) -> None:
    """Assert the secret appears in none of these (tables, errors, text), byte by byte."""
    for item in found:
        shown = item.to_pylist() if isinstance(item, pa.Table) else item
        assert secret not in repr(shown).encode(), "the canary got out"
        assert secret.decode() not in str(shown)


# ---- names -----------------------------------------------------------------------------------


def _with_variable(name: str) -> dict[str, Any]:
    made = document(definition_of(everyone(), None))
    made["variables"].append([name, made["variables"][0][1]])
    return made


def _with_measure(**changes: Any) -> dict[str, Any]:
    measures = Measures()
    measures.define_measure(
        "m",
        numerator=clinical_events.exists_for_patient(),
        denominator=patients.exists_for_patient(),
        group_by={"sex": patients.sex},
        intervals=months(1).starting_on("2024-01-01"),
    )
    made = document(definition_of(everyone(), measures))
    for key, value in changes.items():
        if key == "group":
            made["measures"][0]["group_by"][0][0] = value
        else:
            made["measures"][0][key] = value
    return made


def _with_table(**changes: Any) -> dict[str, Any]:
    made = document(definition_of(everyone(), None))
    made["tables"][0].update(changes)
    return made


PLACES: dict[str, Callable[[str], dict[str, Any]]] = {
    "variable": _with_variable,
    "measure": lambda name: _with_measure(name=name),
    "group_by": lambda name: _with_measure(group=name),
    "table": lambda name: _with_table(name=name),
    "table by": lambda name: _with_table(by=[name]),
    "statistic's variable": lambda name: _with_table(statistics=[[name, "mean"]]),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    "name", [HOSTILE, "Sex", "1st", "", "a" * 64, "naïve", "a b", "patient_id", "numerator", 7]
)
def test_every_name_in_the_json_meets_the_languages_rule(place: str, name: Any) -> None:
    with pytest.raises(n.DefinitionError, match="name") as refused:
        serial.from_json(orjson.dumps(PLACES[place](name)))
    assert len(str(refused.value)) < 300  # the name is shown cut short, if at all


def test_a_statistic_is_one_the_service_knows() -> None:
    made = _with_table(statistics=[["sex", "sum(x) from v_patients --"]])
    with pytest.raises(n.DefinitionError, match=r"unknown statistic.*mean, median, sd"):
        serial.from_json(orjson.dumps(made))


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=70) | st.from_regex(r"[a-z][a-z0-9_]{0,65}", fullmatch=True))
def test_the_language_and_the_json_accept_the_same_names(name: str) -> None:
    assume(name != "sex")  # the definition has a variable called sex already
    try:
        check_name(name, "a variable", None)
        rule = True
    except n.DefinitionError:
        rule = False
    made = Dataset()
    try:
        setattr(made, name, patients.imd_decile)
        language = True
    except (n.DefinitionError, AttributeError, TypeError):
        language = False
    try:
        serial.from_json(orjson.dumps(_with_variable(name)))
        json = True
    except n.DefinitionError:
        json = False
    assert rule == language == json


def test_a_hostile_name_built_by_hand_reaches_no_sql(engine: Engine, tmp_path: Path) -> None:
    # Made without the language or the JSON (so no name rule was applied): the compiler never
    # writes a name, so the names only label the results.
    out = tmp_path / "out.csv"
    hostile = HOSTILE.replace("/tmp/out.csv", str(out))
    sex = n.Column(P, "sex")
    measure = n.Measure(
        f"{hostile} m",
        n.Aggregate("exists", E),
        n.Aggregate("exists", P),
        ((f"{hostile} g", sex),),
        n.Intervals("months", date(2024, 1, 1), 1),
    )
    definition = n.Definition(
        n.Aggregate("exists", P), ((hostile, sex), ("imd", n.Column(P, "imd_decile"))), (measure,)
    )
    results = by_id(engine.run(definition, PEOPLE), PEOPLE)
    assert results.dataset is not None
    assert results.dataset.column_names == ["patient_id", hostile, "imd"]
    assert column(results, hostile) == {"p1": "F", "p2": "M"}
    assert results.measures[f"{hostile} m"].column(f"{hostile} g").to_pylist() == ["F", "M"]
    assert not out.exists()
    for text in (
        sql.dataset_sql(definition, sql.DIALECTS["duckdb"]),
        sql.measure_sql(definition, measure, sql.DIALECTS["spark"]),
    ):
        assert "copy" not in text and "out.csv" not in text


# ---- values: one literal function per dialect ------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)


@pytest.fixture(scope="module")
def duckdb_box() -> Iterator[Sandbox]:
    by_key = keyed(PEOPLE)
    with DuckDBEngine().sandbox(by_key) as box:
        yield box


def literal_back(box: Any, dialect: str, text: str) -> Any:
    query = sql.Query({}, f"select {sql.DIALECTS[dialect].literal(text, 'str')} as v0")
    return box.query(query).column(0).to_pylist()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
@example(text="".join(NASTY))
def test_any_text_comes_back_exactly_from_a_duckdb_literal(duckdb_box: Sandbox, text: str) -> None:
    for each in (text, *NASTY) if text == "".join(NASTY) else (text,):
        assert literal_back(duckdb_box, "duckdb", each) == [each]


@pytest.fixture(scope="module")
def spark_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    engine_named("spark")  # skips (or fails, when Spark is required) without Spark
    from gpdpr.tre.engines import spark

    session = spark.session().newSession()
    for key, value in spark.CONFINED.items():
        session.conf.set(key, value)
    box = spark.Sandbox(session, tmp_path_factory.mktemp("spark-run"), 600)
    try:
        yield box
    finally:
        box.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
@example(text="".join(NASTY))
def test_any_text_comes_back_exactly_from_a_spark_literal(spark_box: Any, text: str) -> None:
    assert literal_back(spark_box, "spark", text) == [text]


@pytest.mark.parametrize("value", [NASTY, "x' || (select 1) || '"], ids=["nasty", "subquery"])
def test_text_and_codes_in_a_definition_are_only_values(engine: Engine, value: Any) -> None:
    # Values are printable text (no control characters): nodes.Value.
    texts = [t for t in value if t.isprintable()] if isinstance(value, list) else [value]
    made = everyone()
    for i, text in enumerate(texts):
        setattr(made, f"t{i}", case(when(patients.sex == "F").then(text), otherwise=text))
        setattr(made, f"in{i}", patients.sex.is_in([text, "F"]))
    results = run(engine, PEOPLE, made)
    for i, text in enumerate(texts):
        assert column(results, f"t{i}") == {"p1": text, "p2": text}
        assert column(results, f"in{i}") == {"p1": True, "p2": text == "M"}


# ---- the guard -------------------------------------------------------------------------------

RELATIONS = {"v_patients", "v_clinical_events", "intervals"}


@pytest.mark.parametrize(
    "text",
    [
        "select 1; select 2",
        "select 1;",
        "copy (select * from v_patients) to '/tmp/x.csv'",
        "attach '/tmp/x.db'",
        "install httpfs",
        "load httpfs",
        "pragma version",
        "set enable_external_access = true",
        "select * from read_csv('/etc/passwd')",
        "select * from '/etc/passwd'",
        "select * from glob('/*')",
        "select * from query('select 1')",
        "select getenv('HOME')",
        "select reflect('java.lang.System', 'getenv', 'HOME')",
        "select java_method('java.lang.System', 'getProperty', 'user.home')",
        "select * from parquet.`/etc/passwd`",
        "select * from range(3)",
        "select * from secrets",
        "select * from v_patients, secrets",
        "select * from v_patients p join secrets s using (patient_id)",
        "select * from information_schema.tables",
        "select * from global_temp.v_patients",
        "select 1 -- a comment",
        "select /* a comment */ 1",
        "select e'\\x41'",
        "select $$x$$",
        "select ?",
        'select "patient_id" from v_patients',  # a quoted name must be a schema column
        "with a as (select 1) select * from a, b",
        "select 'unterminated",
        "select (1",
        "SELECT 1",
    ],
)
def test_the_guard_refuses_sql_the_compiler_never_writes(text: str) -> None:
    for dialect in ("duckdb", "spark"):
        with pytest.raises(guard.Refused):
            guard.check(text, dialect, RELATIONS)


def test_the_guard_reads_literals_as_each_engine_does() -> None:
    # DuckDB takes a backslash in a string as it is; Spark escapes the next character with it.
    # Each text is one harmless query one way, and hides a second statement the other way.
    duckdb_harmless = "select 'a\\' as v0, ' ; select 1 --' as v1"
    spark_harmless = "select 'a\\' ; select 1 --' as v0"
    guard.check(duckdb_harmless, "duckdb", RELATIONS)
    guard.check(spark_harmless, "spark", RELATIONS)
    with pytest.raises(guard.Refused):
        guard.check(duckdb_harmless, "spark", RELATIONS)
    with pytest.raises(guard.Refused):
        guard.check(spark_harmless, "duckdb", RELATIONS)


def test_compiled_queries_pass_the_guard_and_name_only_their_own_tables() -> None:
    measures = Measures()
    measures.define_measure(
        "m",
        numerator=clinical_events.where(
            clinical_events.effective_date.is_during(INTERVAL)
        ).exists_for_patient(),
        denominator=practice_registrations.for_patient_on(INTERVAL.start_date).exists_for_patient(),
        group_by={"practice": practice_registrations.for_patient_on(INTERVAL.start_date).practice},
        intervals=months(2).starting_on("2024-01-01"),
    )
    definition = through_json(definition_of(everyone(), measures))
    made = {f"v_{t}" for t in TABLES} | {sql.INTERVALS}
    for dialect in ("duckdb", "spark"):
        d = sql.DIALECTS[dialect]
        guard.check(sql.dataset_sql(definition, d), dialect, made)
        guard.check(sql.measure_sql(definition, definition.measures[0], d), dialect, made)
        with pytest.raises(guard.Refused, match="not a table made for this run"):
            guard.check(sql.dataset_sql(definition, d), dialect, made - {"v_patients"})


# ---- the DuckDB sandbox ----------------------------------------------------------------------


class _Statements:
    """A DuckDB connection that keeps the text of every statement executed on it."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.texts: list[str] = []

    def execute(self, text: str, *args: Any) -> Any:
        self.texts.append(text)
        return self.con.execute(text, *args)

    def sql(self, text: str) -> Any:
        self.texts.append(text)
        return self.con.sql(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def test_a_step_table_is_dropped_once_no_step_to_come_reads_it() -> None:
    """A run's steps are made into tables a step at a time; each is dropped as soon as no
    later step reads it (so that, at national scale, what has been read does not fill the
    memory the answer needs), and none is left after the answer, which is the same."""
    query = sql.Query(
        {
            "s_a": "select patient_id from v_patients",
            "s_b": "select patient_id from s_a where patient_id < 3",
            "s_c": "select count(*) as n from s_b",
            "s_unread": "select 1 as one",
        },
        "select s_c.n, (select count(*) from s_a) as everyone from s_c",
    )
    with DuckDBEngine().sandbox(keyed(PEOPLE)) as box:
        real = box.con
        spy = _Statements(real)
        box.con = spy  # type: ignore[assignment]
        try:
            answer = box.query(query).to_pylist()
        finally:
            box.con = real
        left = real.execute("select table_name from duckdb_tables() where temporary").fetchall()
    people = PEOPLE["patients"].num_rows
    assert answer == [{"n": min(people, 3), "everyone": people}]
    made = [t.split()[3] for t in spy.texts if t.startswith("create temp table")]
    dropped = [t.split()[-1] for t in spy.texts if t.startswith("drop table")]
    assert made == ["s_a", "s_b", "s_c"]  # a step nothing reads is never made
    # s_b is dropped as soon as s_c (its last reader) is made; s_a and s_c, which the
    # answer reads, only after it
    assert spy.texts.index("drop table if exists s_b") < next(
        i for i, t in enumerate(spy.texts) if t.startswith("select s_c.n")
    )
    assert sorted(dropped) == ["s_a", "s_b", "s_c"] and left == []


def test_duckdb_reads_its_views_with_external_access_off(duckdb_box: Sandbox) -> None:
    settings = duckdb_box.execute(
        "select current_setting('enable_external_access') as a, "
        "current_setting('lock_configuration') as b, "
        "current_setting('python_enable_replacements') as c, "
        "(select count(*) from v_patients) as d"
    )
    assert settings.to_pylist() == [{"a": False, "b": True, "c": False, "d": 2}]


@pytest.mark.parametrize(
    "text",
    [
        "copy (select * from v_patients) to '{out}'",
        "select * from read_csv('{canary}')",
        "select * from '{canary}'",
        "attach '{out}' as stolen",
        "install httpfs",
        "load httpfs",
        "select * from glob('{folder}/*')",
        "set enable_external_access = true",
        "set lock_configuration = false",
        "select 1; copy (select 1) to '{out}'",
        "select 1; select * from read_csv('{canary}')",
    ],
)
def test_the_duckdb_sandbox_refuses_files_and_second_statements_even_past_the_guard(
    duckdb_box: Sandbox, tmp_path: Path, text: str
) -> None:
    path, secret = canary(tmp_path)
    out = tmp_path / "out.csv"
    hostile = text.format(canary=path, out=out, folder=tmp_path)
    with pytest.raises((guard.Refused, duckdb.Error)) as refused:
        found = duckdb_box.execute(hostile)
        nowhere(secret, found)
    nowhere(secret, str(refused.value))
    assert not out.exists()
    assert duckdb_box.execute("select count(*) as n from v_patients").to_pylist() == [{"n": 2}]


def test_a_duckdb_run_is_stopped_at_its_time_limit_and_leaves_nothing() -> None:
    many = make_views(patients=[{"patient_id": f"p{i}", "imd_decile": i} for i in range(3000)])
    by_key = keyed(many)
    engine = DuckDBEngine(threads=1, seconds=0.5)
    with engine.sandbox(by_key) as box:
        forever = sql.Query(
            {},
            "select sum(a.imd_decile * b.imd_decile * c.imd_decile) as v0 "
            "from v_patients a cross join v_patients b cross join v_patients c",
        )
        with pytest.raises(
            RunFailed, match=r"time limit of 0\.5 seconds \(GPDPR_TRE_RUN_SECONDS\)"
        ):
            box.query(forever)
        folder = Path(box.folder)
        assert folder.exists()
    assert not folder.exists()


def test_duckdb_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPDPR_TRE_MEMORY", "300MiB")
    monkeypatch.setenv("GPDPR_TRE_RUN_SECONDS", "90")
    engine = DuckDBEngine()
    assert engine.seconds == 90
    with engine.sandbox(keyed(PEOPLE)) as box:
        found = box.execute("select current_setting('memory_limit') as m").to_pylist()
    assert found == [{"m": "300.0 MiB"}]
    monkeypatch.setenv("GPDPR_TRE_MEMORY", "lots'; set x=1; --")
    with pytest.raises(UserError, match="a memory limit is a size such as 4GB"):
        DuckDBEngine()
    monkeypatch.setenv("GPDPR_TRE_RUN_SECONDS", "soon")
    with pytest.raises(UserError, match="GPDPR_TRE_RUN_SECONDS is a number of seconds"):
        DuckDBEngine(memory="1GB")


# ---- the Spark sandbox -----------------------------------------------------------------------


def test_spark_refuses_files_reflection_and_other_views(spark_box: Any, tmp_path: Path) -> None:
    from gpdpr.tre.engines import spark

    path, secret = canary(tmp_path)
    pq.write_table(pa.table({"secret": [secret.decode()]}), tmp_path / "canary.parquet")
    session = spark_box.spark
    # Spark itself, asked directly: files named in SQL are not read.
    for text in (
        f"select * from parquet.`{tmp_path / 'canary.parquet'}`",
        f"select * from csv.`{path}`",
    ):
        with pytest.raises(Exception) as refused:
            session.sql(text).collect()
        nowhere(secret, str(refused.value))
    # A view over a file outside the run's folder is refused by its plan, though it exists.
    session.read.parquet(str(tmp_path / "canary.parquet")).createOrReplaceTempView("other")
    with pytest.raises(guard.Refused, match="not a view of this run"):
        spark._check_plan(session.sql("select * from other"), spark_box.folder, set())
    spark_box.relations.add("other")  # as if the guard were fooled: the plan check remains
    try:
        with pytest.raises(guard.Refused) as refused:
            spark_box.query(sql.Query({}, "select * from other"))
        nowhere(secret, str(refused.value))
    finally:
        spark_box.relations.discard("other")
        session.catalog.dropTempView("other")
    for text in (
        "select reflect('java.lang.System', 'getenv', 'HOME') as v0",
        f"select * from parquet.`{tmp_path / 'canary.parquet'}`",
        "select 1 as v0; select 2 as v1",
    ):
        with pytest.raises(guard.Refused):
            spark_box.query(sql.Query({}, text))


def test_a_spark_run_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    engine_named("spark")
    from gpdpr.tre.engines import spark

    many = make_views(patients=[{"patient_id": f"p{i}", "imd_decile": i} for i in range(2000)])
    session = spark.session().newSession()
    box = spark.Sandbox(session, tmp_path, 1.0)
    try:
        box.register("v_patients", keyed(many)["patients"])
        forever = sql.Query(
            {},
            "select sum(a.imd_decile * b.imd_decile * c.imd_decile) as v0 "
            "from v_patients a cross join v_patients b cross join v_patients c",
        )
        with pytest.raises(RunFailed, match="time limit of 1 seconds"):
            box.query(forever)
    finally:
        box.close()


def test_a_canary_outside_the_views_never_comes_out(engine: Engine, tmp_path: Path) -> None:
    path, secret = canary(tmp_path)
    made = everyone()
    reads = [
        f"' || (select * from read_csv('{path}')) || '",
        f"x'); copy (select 1) to '{path}.out'; --",
        f"${{file:{path}}}",
        f"select * from parquet.`{path}`",
    ]
    for i, text in enumerate(reads):
        setattr(made, f"t{i}", case(when(patients.sex.is_in([text])).then(text), otherwise=text))
    try:
        results = run(engine, PEOPLE, made)
    except Exception as error:  # refusing is fine; telling is not
        nowhere(secret, str(error))
        raise
    assert results.dataset is not None
    nowhere(secret, results.dataset)
    for i, text in enumerate(reads):
        assert column(results, f"t{i}") == {"p1": text, "p2": text}
    assert not Path(f"{path}.out").exists()


# ---- what a definition may release -----------------------------------------------------------


def _measure(**given: Any) -> Measures:
    made = Measures()
    made.define_measure(
        "m",
        **{
            "numerator": clinical_events.exists_for_patient(),
            "denominator": patients.exists_for_patient(),
            "intervals": months(1).starting_on("2024-01-01"),
            **given,
        },
    )
    return made


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        # A whole number would weigh one person more than others.
        ({"numerator": clinical_events.count_for_patient()}, "numerator of m must be true/false"),
        ({"numerator": clinical_events.count_for_patient() * 10}, "true/false for each patient"),
        ({"denominator": patients.imd_decile}, "denominator of m must be true/false"),
        ({"numerator": clinical_events.effective_date.is_not_null()}, "many values per patient"),
        ({"group_by": {"born": patients.date_of_birth}}, r"a date.*band it with `\.year`"),
        ({"group_by": {"value": clinical_events.value.maximum_for_patient()}}, "a decimal number"),
    ],
)
def test_numerators_are_true_or_false_and_groups_are_categories(
    given: dict[str, Any], problem: str
) -> None:
    with pytest.raises(n.DefinitionError, match=problem):
        through_json(definition_of(None, _measure(**given)))


def test_a_whole_number_or_category_may_group() -> None:
    made = _measure(
        group_by={
            "decile": patients.imd_decile,
            "sex": patients.sex,
            "code": clinical_events.sort_by(clinical_events.effective_date)
            .first_for_patient()
            .code,
            "born": patients.date_of_birth.year,
            "any": clinical_events.exists_for_patient(),
        }
    )
    through_json(definition_of(None, made))


@pytest.mark.parametrize(
    ("variable", "statistic", "problem"),
    [
        (patients.date_of_birth, None, r"groups by v, which is a date.*\.year"),
        (clinical_events.value.maximum_for_patient(), None, "groups by v, which is a decimal"),
        (clinical_events.exists_for_patient(), "mean", "the mean of v needs a number"),
        (patients.sex, "median", "the median of v needs a number"),
    ],
)
def test_tables_group_by_categories_and_summarise_numbers(
    variable: Any, statistic: str | None, problem: str
) -> None:
    made = everyone()
    made.v = variable
    if statistic is None:
        made.add_table("t", by=["v"])
    else:
        made.add_table("t", by=["sex"], statistics={"v": [statistic]})
    with pytest.raises(n.DefinitionError, match=problem):
        through_json(definition_of(made, None))


# ---- scope -----------------------------------------------------------------------------------


def test_reading_a_table_without_a_column_needs_it_granted() -> None:
    made = everyone()
    made.medicines = medications.count_for_patient()
    made.referred = practice_registrations.exists_for_patient()
    used = n.columns_used(through_json(definition_of(made, None)))
    assert used["medications"] == set() and used["practice_registrations"] == set()
    assert views.required_fields(used) == {
        "medications": ["issue_date", "patient"],
        "patients": ["patient", "sex"],
        "registrations": ["end_date", "patient", "start_date"],
    }


def test_every_column_needs_fields_an_agreement_can_grant() -> None:
    spec = shipped()
    for table in TABLES.values():
        fields = spec.tables[table.lake].field_names
        for needed in views.period_fields(table):
            assert needed in fields, (table.name, needed)
        for column_ in table.columns.values():
            assert column_.needs, f"{table.name}.{column_.name} needs nothing"
            items = tuple(Item(table.lake, need, "reason") for need in column_.needs)
            check_items(items, spec)  # each is something an application may ask for
    assert TABLES["practice_registrations"].columns["practice"].needs == ("practice",)
    with pytest.raises(UserError, match="does not collect 'ods_code'"):
        check_items((Item("registrations", "ods_code", "reason"),), spec)


# ---- bounded cost ----------------------------------------------------------------------------


def _json(
    nodes: list[dict[str, Any]], variable: int, *, measure: int | None = None
) -> dict[str, Any]:
    """A definition of everyone, with `variable` (a node's index) as a dataset variable."""
    base = [
        {"node": "SelectTable", "name": "patients", "at": None},
        {"node": "Aggregate", "op": "exists", "source": 0, "at": None},
        {"node": "Column", "frame": 0, "name": "sex", "at": None},
        {"node": "Column", "frame": 0, "name": "imd_decile", "at": None},
    ]
    shift = len(base)
    moved = [
        {
            key: (
                value + shift
                if key in ("source", "frame", "series", "default") and isinstance(value, int)
                else [a + shift for a in value]
                if key == "args"
                else value
            )
            for key, value in node.items()
        }
        for node in nodes
    ]
    return {
        "format": serial.FORMAT,
        "nodes": base + moved,
        "population": 1,
        "variables": [["sex", 2], ["v", variable + shift]],
        "measures": [],
        "tables": [{"name": "t", "by": ["sex"], "statistics": [], "at": None}],
        "disclosure": "round5",
    }


def doubling(levels: int, copies: bool = False) -> dict[str, Any]:
    """The issue's attack: each level adds the level below to itself, so the expression
    doubles per level while the JSON grows by one node (or two equal copies) a level."""
    nodes: list[dict[str, Any]] = [
        {"node": "Column", "frame": -4, "name": "imd_decile", "at": None}
    ]
    below = [0, 0]
    for _ in range(levels):
        made = []
        for _ in range(2 if copies else 1):
            nodes.append({"node": "Apply", "op": "add", "args": below, "at": None})
            made.append(len(nodes) - 1)
        below = made if copies else [made[0], made[0]]
    return _json(nodes, below[0])


def counting_children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a node's children are looked at (the unit of work of every walk)."""
    calls = [0]
    real = n.children

    def counted(node: n.Node) -> list[n.Node]:
        calls[0] += 1
        return real(node)

    monkeypatch.setattr(n, "children", counted)
    return calls


@pytest.mark.parametrize("copies", [False, True], ids=["reused", "written out twice"])
def test_a_definition_doubling_per_level_is_refused_in_linear_work(
    monkeypatch: pytest.MonkeyPatch, copies: bool
) -> None:
    attack = orjson.dumps(doubling(60, copies))
    assert len(attack) < 12_000  # a few kilobytes for an expression of 2**60 terms
    calls = counting_children(monkeypatch)
    with pytest.raises(n.DefinitionError, match="too large when written out"):
        serial.from_json(attack)
    assert calls[0] < 20 * len(doubling(60, copies)["nodes"])


def test_equal_nodes_read_from_json_are_one_node_and_counted_once() -> None:
    definition = serial.from_json(orjson.dumps(doubling(12, copies=True)))
    graph = n.walk(*n.roots(definition))
    # The patients, everyone, sex, the deprivation decile (written twice: one node) and one
    # node a level.
    assert len(graph) == 4 + 12
    assert limits.expanded(graph, n.roots(definition)) >= 2**12


def test_a_deep_chain_is_refused_without_recursing() -> None:
    nodes = [{"node": "Apply", "op": "gt", "args": [-1, -1], "at": None}]
    nodes += [{"node": "Apply", "op": "not", "args": [i], "at": None} for i in range(5000)]
    with pytest.raises(n.DefinitionError, match=r"node \d+.*nests more than 100 levels deep"):
        serial.from_json(orjson.dumps(_json(nodes, 5000)))
    # Built with the language (on the researcher's machine) and checked there too.
    deep = patients.imd_decile > 1
    for _ in range(5000):
        deep = ~deep
    made = everyone()
    made.deep = deep
    with pytest.raises(n.DefinitionError, match="nests more than 100 levels deep"):
        n.validate(definition_of(made, None))


def _deep(shape: str, depth: int) -> n.Series:
    """A per-patient value exactly `depth` nodes deep, of one shape of nesting."""
    found: n.Series
    if shape == "arithmetic":
        found = n.Column(P, "imd_decile")
        for _ in range(depth - 2):
            found = n.Apply("add", (found, n.Value(1, "int")))
    elif shape == "filters":
        frame: n.Frame = E
        for _ in range(depth - 4):
            frame = n.Where(frame, n.Apply("gt", (n.Column(E, "value"), n.Value(1.0, "float"))))
        found = n.Aggregate("count", frame)
    else:  # per-patient values inside conditions inside per-patient values
        found = n.Value(0.0, "float")
        while _depth(found) + 5 <= depth:
            count = n.Aggregate("count", n.Where(E, n.Apply("gt", (n.Column(E, "value"), found))))
            found = n.Apply("add", (count, n.Value(0.5, "float")))
        while _depth(found) < depth:
            found = n.Apply("neg", (found,))
    assert _depth(found) == depth, (shape, _depth(found))
    return found


def _depth(root: n.Node) -> int:
    depth: dict[n.Node, int] = {}
    for node in n.walk(root):
        depth[node] = 1 + max((depth[c] for c in n.children(node)), default=0)
    return depth[root]


@pytest.mark.parametrize("shape", ["arithmetic", "filters", "nested"])
def test_a_definition_as_deep_as_allowed_runs(engine: Engine, shape: str) -> None:
    deepest = _deep(shape, limits.MAX_DEPTH)
    definition = n.Definition(
        n.Aggregate("exists", P),
        (("sex", n.Column(P, "sex")), ("v", deepest)),
        tables=(n.AggregateTable("t", ("sex",), ()),),
    )
    results = engine.run(through_json(definition), PEOPLE)
    assert results.dataset is not None and results.dataset.num_rows == 2
    deeper = n.Apply("neg", (deepest,)) if deepest.type != "bool" else deepest
    too_deep = n.Definition(definition.population, (("sex", n.Column(P, "sex")), ("v", deeper)))
    with pytest.raises(n.DefinitionError, match="nests more than"):
        engine.run(too_deep, PEOPLE)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["variables"].extend([[f"v{i}", 2] for i in range(600)]), "dataset variables"),
        (
            lambda d: d["measures"].extend(
                [{**d["measures"][0], "name": f"m{i}"} for i in range(60)]
            ),
            "measures",
        ),
        (lambda d: d["measures"][0]["intervals"].update(count=5000), "1 to 1200 intervals"),
        (
            lambda d: d["measures"].extend(
                [
                    {
                        **d["measures"][0],
                        "name": f"m{i}",
                        "intervals": {**d["measures"][0]["intervals"], "count": 1200},
                    }
                    for i in range(5)
                ]
            ),
            "intervals over all measures",
        ),
    ],
)
def test_too_many_variables_measures_or_intervals_are_refused(
    change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    made = _with_measure()
    change(made)
    with pytest.raises(n.DefinitionError, match=problem):
        serial.from_json(orjson.dumps(made))


def test_too_many_codes_are_refused() -> None:
    made = document(definition_of(everyone(), None))
    too_many = [f"{i:08d}" for i in range(n.MAX_CODES + 1)]
    made["nodes"].append(
        {"node": "IsIn", "series": 2, "codes": too_many, "codelist": "x", "at": None}
    )
    made["variables"].append(["many", len(made["nodes"]) - 1])
    with pytest.raises(n.DefinitionError, match="at most 20,000"):
        serial.from_json(orjson.dumps(made))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_sql_compiled_is_no_larger_than_the_expanded_size_allows(data: st.DataObject) -> None:
    # limits.expanded bounds what the compiler writes (so its cap bounds every query's text):
    # checked on random definitions, and on the operations the compiler writes out more than
    # once, nested.
    from test_tre_properties import definitions, read_in_one_pass, spannable

    made: n.Definition = data.draw(st.one_of(definitions(), read_in_one_pass()))
    measure: n.Measure = data.draw(spannable())
    day: n.Series = n.Column(P, "date_of_birth")
    for _ in range(data.draw(st.integers(0, 3))):  # each level writes `day` out 18 times
        day = n.Apply("add_days", (day, n.Apply("years_between", (day, day))))
    nested = (("nested", n.Apply("year", (day,))),)
    for definition in (
        through_json(n.Definition(made.population, made.variables + nested, tables=made.tables)),
        through_json(n.Definition(None, (), (measure,))),
    ):
        roots = n.roots(definition)
        size = limits.expanded(n.walk(*roots), roots)
        for dialect in sql.DIALECTS.values():
            texts = [sql.measure_sql(definition, m, dialect) for m in definition.measures]
            if definition.population is not None:
                texts.append(sql.dataset_sql(definition, dialect))
            for text in texts:
                assert len(text) <= 100 * size + 10_000
