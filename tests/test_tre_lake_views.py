"""Views made inside the engine from the lake's own files (`views.plan`, issue 23): each engine
gives the answers it gives on the same views made first, no compiled query can name what the
views are made from, and nothing of the lake's pseudonyms reaches a result.

Runs on the research service of test_tre_runs (two synthetic practices collected into a lake,
agreements approved by the panel)."""

# ruff: noqa: F811
from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

import tre_data
from governing import LEAD
from gpdpr.custodian.central import Custodian, project_pseudonyms, run_use_token
from gpdpr.governance import agreements
from gpdpr.lake.store import Lake, Snapshot
from gpdpr.lake.tables import PERSON, columns_tag, file_name, written_tag
from gpdpr.tre import views
from gpdpr.tre.engines import duckdb as duckdb_engine
from gpdpr.tre.engines import guard, sql
from gpdpr.tre.engines.base import Engine, LakeViews, Views
from gpdpr.tre.engines.duckdb import DIALECT as DUCKDB
from gpdpr.tre.engines.duckdb import DuckDBEngine, install, lake_files
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query import serial
from gpdpr.tre.query.schema import PATIENT_ID, PATIENT_KEY, view_name

# The research service fixture is shared with test_tre_runs: imported, so a test naming it
# as an argument "redefines" it as far as ruff can tell.
from test_tre_runs import Service, document, service  # noqa: F401


def planned(
    service: Service,
    definition: n.Definition,
    snapshot: Snapshot | None = None,
    excluded: frozenset[str] = frozenset(),
) -> tuple[LakeViews, bytes]:
    """The definition's views over the service's lake (or `snapshot`), as a run has them,
    with the people `excluded` (lake pseudonyms) opted out."""
    used = n.columns_used(definition)
    with sa.orm.Session(service.engine) as session:
        scope = agreements.authorise(session, LEAD, service.applied, views.required_fields(used))
    key = Custodian(service.home / "keys", service.engine).project_key(scope.application, LEAD)
    snapshot = snapshot or Lake.open(service.home / "lake").snapshot()
    view_scope = views.ViewScope(scope.data_from, scope.data_to, scope.population, excluded)
    return views.plan(snapshot, view_scope, used, key), key


def study(service: Service) -> n.Definition:
    return serial.from_json(document(service))


def staff_study(service: Service) -> n.Definition:
    """A dataset showing a pseudonym column (who recorded the latest event) besides the
    patient's."""
    return serial.from_json(
        document(
            service,
            """
            from gpdpr.tre.language import *
            dataset = Dataset()
            dataset.define_population(patients.exists_for_patient())
            dataset.sex = patients.sex
            latest = clinical_events.sort_by(clinical_events.effective_date).last_for_patient()
            dataset.by = latest.staff
            dataset.when = latest.effective_date
            dataset.add_table("by_sex", by=["sex"])
            """,
        )
    )


def answers(engine: Engine, definition: n.Definition, given: Views) -> dict[str, pa.Table]:
    results = engine.run(definition, given)
    found = {name: table for name, table in results.measures.items()}
    if results.dataset is not None:
        found["dataset"] = results.dataset.sort_by(PATIENT_ID)
    return {
        name: t.sort_by([(c, "ascending") for c in t.column_names]) for name, t in found.items()
    }


@pytest.mark.parametrize("name", ["duckdb", "spark"])
def test_views_read_in_place_answer_as_the_same_views_made_first(
    service: Service, name: str
) -> None:
    engine = tre_data.engine(name)
    for definition in (study(service), staff_study(service)):
        lake, _ = planned(service, definition)
        made = views.made(lake)
        in_place = answers(engine, definition, lake)
        assert in_place == answers(DuckDBEngine(), definition, made)
        assert in_place["dataset"].num_rows > 100  # people were counted, not nobody


@pytest.mark.parametrize("name", ["duckdb", "spark"])
def test_a_run_says_whom_it_read_by_tokens_only(service: Service, name: str) -> None:
    """The engine's use tokens are exactly the custodian's tokens of the people the dataset
    counts (under the run's salt); the dataset keeps them by whole-number key, and nothing of
    a lake pseudonym, a patient's or a member of staff's, comes back in the dataset or the
    tokens."""
    definition = staff_study(service)
    lake, key = planned(service, definition)
    results = tre_data.engine(name).run(definition, lake)
    snapshot = Lake.open(service.home / "lake").snapshot()
    lake_ids = set(snapshot.read("patients", ["patient"]).column("patient").to_pylist())
    staff_ids = set(snapshot.read("staff", ["staff"]).column("staff").to_pylist())
    assert results.uses is not None and results.dataset is not None
    assert results.uses.salt == lake.salt
    keys = results.dataset.column(PATIENT_ID).to_pylist()
    assert sorted(keys) == list(range(len(keys)))  # the run's own numbers, nothing else
    made = views.made(lake)["patients"]  # who each key is, as the views made first say
    project_of = dict(
        zip(made.column(PATIENT_KEY).to_pylist(), made.column(PATIENT_ID).to_pylist(), strict=True)
    )
    shown_people = {project_of[k] for k in keys}
    ordered = sorted(lake_ids)
    projected = project_pseudonyms(key, pa.array(ordered)).to_pylist()
    lake_of = dict(zip(projected, ordered, strict=True))
    assert shown_people <= set(lake_of)
    expected = sorted(
        bytes.fromhex(run_use_token(key, lake.salt, lake_of[p]))[:16] for p in shown_people
    )
    tokens = results.uses.tokens.tobytes()
    assert [tokens[i : i + 16] for i in range(0, len(tokens), 16)] == expected
    assert len(expected) > 100
    # Byte by byte: no lake pseudonym (patient's or staff's) anywhere in what came back.
    shown = tokens + b"".join(
        str(v).encode()
        for column in results.dataset.columns
        for v in column.to_pylist()
        if v is not None
    )
    assert not [p for p in lake_ids | staff_ids if p.encode() in shown]
    assert not [p for p in lake_ids | staff_ids if bytes.fromhex(p)[:8] in tokens]
    staff = {v for v in results.dataset.column("by").to_pylist() if v is not None}
    assert staff and staff <= set(project_pseudonyms(key, pa.array(sorted(staff_ids))).to_pylist())


@pytest.mark.parametrize("name", ["duckdb", "spark"])
def test_no_one_opted_out_is_read_by_the_people_or_the_tokens(service: Service, name: str) -> None:
    """People opted out (matched by their number in the lake's rows) are in neither the
    dataset nor the run's tokens; everyone else the same run would read is in both."""
    definition = staff_study(service)
    snapshot = Lake.open(service.home / "lake").snapshot()
    everyone = sorted(set(snapshot.read("patients", ["patient"]).column("patient").to_pylist()))
    opted_out = frozenset(everyone[::7])

    def read(excluded: frozenset[str]) -> tuple[set[str], int]:
        """Whom a run read (found by the custodian's tokens of everyone), and its rows."""
        lake, key = planned(service, definition, excluded=excluded)
        assert lake.numbered
        results = tre_data.engine(name).run(definition, lake)
        assert results.uses is not None and results.dataset is not None
        tokens = results.uses.tokens.tobytes()
        kept = {tokens[i : i + 16] for i in range(0, len(tokens), 16)}
        of = {bytes.fromhex(run_use_token(key, lake.salt, p))[:16]: p for p in everyone}
        assert kept <= set(of)  # every token is someone's
        return {of[t] for t in kept}, results.dataset.num_rows

    everyone_read, rows = read(frozenset())
    without, rows_without = read(opted_out)
    assert without == everyone_read - opted_out
    assert len(everyone_read & opted_out) > 10  # some who would have been read were not
    assert rows_without == rows - len(everyone_read & opted_out)


SOURCES = [
    "select * from source_people",
    "select key from source_run_key",
    "select token from source_people_read",
    "select patient from source_clinical_events",
    "select * from source_excluded",
    "select lake, project from source_map_staff",
    "select inner, outer from source_key",
    "select * from v_patients, source_patients",
    "select * from (select 1) t where exists (select 1 from source_registrations)",
]


@pytest.mark.parametrize("text", SOURCES)
def test_no_query_reads_what_the_views_are_made_from_on_duckdb(service: Service, text: str) -> None:
    lake, _ = planned(service, staff_study(service))
    with DuckDBEngine().sandbox({}, lake_files(lake)) as box:
        install(lake, box.con)
        box.relations.update(view_name(t) for t in lake.views)
        with pytest.raises(guard.Refused):
            box.query(sql.Query({}, text))
        # and the views themselves are readable: the refusal is of the sources only
        assert box.query(sql.Query({}, "select count(*) from v_patients")).num_rows == 1


def test_no_query_reads_what_the_views_are_made_from_on_spark(service: Service) -> None:
    import tempfile
    from pathlib import Path

    from gpdpr.tre.engines import spark

    tre_data.engine("spark")  # skips unless Spark runs here (or is required)
    lake, _ = planned(service, staff_study(service))
    session = spark.session().newSession()
    with tempfile.TemporaryDirectory() as folder:
        box = spark.Sandbox(session, Path(folder), 600)
        try:
            box.install(lake)
            for text in SOURCES:
                with pytest.raises(guard.Refused):
                    box.frame(text)
            assert box.frame("select count(*) from v_patients").count() == 1
        finally:
            box.close()


_KEYING = duckdb.connect()  # one connection for every example: making one is slow


@settings(max_examples=60, deadline=None, derandomize=True)
@given(key=st.binary(max_size=100), texts=st.lists(st.text(), min_size=1, max_size=5))
def test_the_engine_keys_a_pseudonym_as_the_custodian_does(key: bytes, texts: list[str]) -> None:
    """The project pseudonyms an engine computes in SQL are the custodian's HMAC, for any key
    (longer than a block too) and any text."""
    con = _KEYING
    con.register(views.KEYS, views.key_table(key))
    con.register("texts", pa.table({"t": pa.array(texts, pa.string())}))
    found = con.sql(
        f"select {views.project_sql(DUCKDB, 't')} from texts cross join {views.KEYS}"
    ).fetchall()
    assert [row[0] for row in found] == project_pseudonyms(key, pa.array(texts)).to_pylist()


def test_a_sandbox_reads_the_versions_own_files_and_no_other(service: Service) -> None:
    """Past the guard (as if it failed), a run's connection still reads nothing but the files
    of its lake version: not a file planted beside them, not the keys, not a wildcard."""
    lake, _ = planned(service, study(service))
    files = lake_files(lake)
    beside = Path(files[0]).parent / "planted.parquet"
    pq.write_table(pa.table({"patient": ["CANARY-beside"]}), beside)
    try:
        attempts = [
            f"select * from read_parquet('{beside}')",
            f"select * from read_parquet('{Path(files[0]).parent}/*.parquet')",
            f"select * from read_parquet('{service.home}/lake/**/*.parquet')",
            f"select * from read_text('{service.home}/keys/*')",
            "select * from read_csv('/etc/passwd')",
            f"copy (select 1) to '{Path(files[0]).parent}/out.csv'",
        ]
        with DuckDBEngine().sandbox({}, files) as box:
            install(lake, box.con)
            for text in attempts:
                with pytest.raises(duckdb.Error):
                    box.con.execute(text).fetchall()
            # what it may read, it reads: the refusals above are of the files, not of reading
            assert box.con.execute(f"select count(*) from read_parquet('{files[0]}')").fetchall()
        assert not (Path(files[0]).parent / "out.csv").exists()
    finally:
        beside.unlink()


def test_a_lake_kept_under_folders_named_like_columns_reads_each_practice_from_its_own_folder(
    service: Service, tmp_path: Path
) -> None:
    """DuckDB takes every `name=value` folder in a path as a column: a lake kept below folders
    named like a practice or a patient column gives the same answers as anywhere else, each
    registration's practice its own folder's, and nothing of the folders' names."""
    import shutil

    definition = serial.from_json(
        document(
            service,
            """
            from gpdpr.tre.language import *
            dataset = Dataset()
            dataset.define_population(patients.exists_for_patient())
            dataset.sex = patients.sex
            dataset.practice = practice_registrations.for_patient_on("2024-01-01").practice
            dataset.add_table("by_sex", by=["sex"])
            """,
        )
    )
    _, key = planned(service, definition)
    moved = tmp_path / "practice=CANARY1" / "patient=CANARY2" / "lake"
    shutil.copytree(service.home / "lake", moved)
    elsewhere = views.plan(
        Lake.open(moved).snapshot(),
        views.ViewScope(date(2000, 1, 1), date(2030, 1, 1), {}, frozenset()),
        n.columns_used(definition),
        key,
    )
    at_home = views.plan(
        Lake.open(service.home / "lake").snapshot(),
        views.ViewScope(date(2000, 1, 1), date(2030, 1, 1), {}, frozenset()),
        n.columns_used(definition),
        key,
    )
    found = answers(DuckDBEngine(), definition, elsewhere)["dataset"]
    assert found == answers(DuckDBEngine(), definition, at_home)["dataset"]
    practices = {p for p in found.column("practice").to_pylist() if p is not None}
    folders = {p.name.split("=", 1)[1] for p in (service.home / "lake").glob("*/practice=*")}
    assert practices and practices <= folders
    shown = "".join(str(v) for column in found.columns for v in column.to_pylist())
    assert "CANARY" not in shown


@pytest.mark.parametrize("tagged", [False, True])
def test_files_written_under_different_columns_read_as_the_tables_columns(
    tmp_path: Path, tagged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake table's files can come from different versions of the specification: one without
    a column added since (read as null), one with a column since dropped (not read), one with a
    number written narrower (read as the table's type). Each row reads as the table's schema,
    every file read once, its practice from its own folder, whether or not the files' names
    say which columns they hold (`tagged`, as the lake names them since 7 December 2026)."""
    schema = pa.schema([("patient", pa.string()), ("value", pa.int64()), ("added", pa.string())])
    written = {
        "A81001": pa.table({"patient": ["a"], "value": pa.array([1], pa.int64()), "added": ["x"]}),
        "A81002": pa.table({"patient": ["b", "c"], "value": pa.array([2, 3], pa.int32())}),
        "A81003": pa.table({"patient": ["d"], "dropped": ["gone"], "value": [4], "added": ["y"]}),
        "A81004": pa.table({"patient": ["e"], "value": pa.array([5], pa.int64()), "added": ["z"]}),
    }
    for number, (practice, table) in enumerate(written.items()):
        name = (
            file_name(f"{number:032x}", table.column_names)
            if tagged
            else f"part-{number:032x}.zstd.parquet"
        )
        (tmp_path / f"practice={practice}").mkdir()
        pq.write_table(table, tmp_path / f"practice={practice}" / name)
    files = pa.dataset.dataset(
        sorted(str(p) for p in tmp_path.rglob("*.parquet")),
        schema=schema.append(pa.field("practice", pa.string())),
        format="parquet",
    )
    footers_read: list[str] = []
    by_columns = duckdb_engine._by_columns

    def spied(con: duckdb.DuckDBPyConnection, paths: list[str]) -> dict[frozenset[str], list[str]]:
        footers_read.extend(paths)
        return by_columns(con, paths)

    monkeypatch.setattr(duckdb_engine, "_by_columns", spied)
    con = duckdb.connect()
    text = duckdb_engine.parquet_sql(con, files)
    assert text is not None
    assert text.count("read_parquet") == 3  # the two with every column read together
    read_for = {Path(path).parent.name.removeprefix("practice=") for path in footers_read}
    assert read_for == ({"A81002", "A81003"} if tagged else set(written))
    read = con.sql(f"select * from ({text}) order by patient").to_arrow_table()
    assert read.schema == files.schema
    assert read.to_pylist() == [
        {"patient": "a", "value": 1, "added": "x", "practice": "A81001"},
        {"patient": "b", "value": 2, "added": None, "practice": "A81002"},
        {"patient": "c", "value": 3, "added": None, "practice": "A81002"},
        {"patient": "d", "value": 4, "added": "y", "practice": "A81003"},
        {"patient": "e", "value": 5, "added": "z", "practice": "A81004"},
    ]


def test_a_file_whose_name_wrongly_says_it_is_whole_is_an_error_not_a_wrong_answer(
    tmp_path: Path,
) -> None:
    """If a file's name said it held a column it lacks, reading it fails, loudly: no value of
    another column is ever read in its place, and no column is taken to be empty."""
    schema = pa.schema([("patient", pa.string()), ("added", pa.string())])
    every = file_name("1" * 32, ["patient", "added"])
    pq.write_table(pa.table({"patient": ["a"], "added": ["x"]}), tmp_path / every)
    pq.write_table(
        pa.table({"patient": ["b"]}), tmp_path / file_name("2" * 32, ["patient", "added"])
    )
    files = pa.dataset.dataset(sorted(str(p) for p in tmp_path.iterdir()), schema=schema)
    con = duckdb.connect()
    text = duckdb_engine.parquet_sql(con, files)
    assert text is not None
    with pytest.raises(duckdb.Error, match="added"):
        con.sql(f"select * from ({text})").fetchall()


def test_the_lake_names_each_file_for_the_columns_it_holds(tmp_path: Path) -> None:
    """Every file the lake writes is named with the tag of its columns (every column of its
    table, the person's number included), so a run reads no footer to find them."""
    lake = Lake.open(tmp_path / "lake")
    schema = lake.data["patients"].file_schema
    rows = pa.table({f.name: pa.nulls(1, f.type) for f in schema if f.name != PERSON})
    rows = rows.set_column(rows.column_names.index("patient"), "patient", pa.array(["ab" * 32]))
    with lake.writing() as tx:
        tx.write("patients", "A81001", rows)
        tx.commit("load", {})
    files = lake.snapshot().dataset("patients")
    (path,) = files.files
    held = pq.read_schema(path).names
    every = [f.name for f in files.schema if f.name != "practice"]
    assert sorted(held) == sorted(every) and PERSON in held
    assert written_tag(path) == columns_tag(every)


class _MadeBeforeNumbers:
    """A lake version as a lake made before people had numbers has it: no table's schema has
    `person` (its files may hold one, written since; what the schema lacks is not read)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def dataset(self, table: str) -> pyarrow.dataset.Dataset:
        files = self.snapshot.dataset(table)
        schema = pa.schema([f for f in files.schema if f.name != PERSON])
        return pyarrow.dataset.dataset(files.files, schema=schema, format="parquet")


@pytest.mark.parametrize("name", ["duckdb", "spark"])
def test_a_lake_made_before_people_had_numbers_answers_the_same(
    service: Service, name: str
) -> None:
    """Views join people by their number (`person`) where the lake has one, and by pseudonym
    where it has none (a lake made before): the same people, with the same keys, so the same
    answers."""
    definition = staff_study(service)
    now, _ = planned(service, definition)
    snapshot = Lake.open(service.home / "lake").snapshot()
    before, _ = planned(service, definition, _MadeBeforeNumbers(snapshot))  # type: ignore[arg-type]
    assert "= r.person" in now.views["clinical_events"]
    assert "= r.patient" in before.views["clinical_events"]
    engine = tre_data.engine(name)
    found = answers(engine, definition, now)
    assert found == answers(engine, definition, before)
    assert found["dataset"].num_rows > 100


def test_every_row_naming_a_patient_carries_their_number(service: Service) -> None:
    """Each table that names a patient holds their number, the first 16 bytes of their
    pseudonym, in every row (lake.tables.PERSON), and no run's answer shows it."""
    snapshot = Lake.open(service.home / "lake").snapshot()
    counted = 0
    for table in ("patients", "registrations", "clinical_events", "medications"):
        rows = snapshot.read(table, ["patient", PERSON])
        expected = [bytes.fromhex(p[:32]) for p in rows.column("patient").to_pylist()]
        assert rows.column(PERSON).to_pylist() == expected
        counted += rows.num_rows
    assert counted > 1000
    definition = staff_study(service)
    lake, _ = planned(service, definition)
    results = DuckDBEngine().run(definition, lake)
    assert results.dataset is not None and results.uses is not None
    shown = results.uses.tokens.tobytes() + b"".join(
        str(v).encode() + (v if isinstance(v, bytes) else b"")
        for column in results.dataset.columns
        for v in column.to_pylist()
        if v is not None
    )
    numbers = snapshot.read("patients", [PERSON]).column(PERSON).to_pylist()
    assert not [number for number in numbers if number in shown]
