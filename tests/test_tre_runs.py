"""Runs in the research environment, on a real service home: synthetic practices extracted and
collected into a lake, the governance cast, agreements reached through the panel. A run sees only
its agreement's view, under its own pseudonyms; what leaves is controlled, checked twice and
published with the definition and lake version that made it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from extracting import nation
from governing import (
    ADMIN,
    BOTH,
    CHECKERS,
    COLLEAGUE,
    LEAD,
    VENDOR,
    act,
    agreement_of,
    cast,
    form,
    votes,
)
from gpdpr.cli import app
from gpdpr.db import connect, url_for_home
from gpdpr.db.models import Event
from gpdpr.errors import NotAllowed, UserError
from gpdpr.governance import agreements, applications, panel
from gpdpr.governance.form import Item, Population
from gpdpr.lake.store import Lake
from gpdpr.optout.registry import Registry
from gpdpr.tre import runs, views
from gpdpr.tre.engines.base import Results
from gpdpr.tre.models import Run
from gpdpr.tre.query import serial

ITEMS = (
    Item("patients", "patient", "to count people once"),
    Item("patients", "sex", "outcomes differ by sex"),
    Item("patients", "birth_year", "age"),
    Item("patients", "birth_month", "age"),
    Item("registrations", "patient", "who is registered"),
    Item("registrations", "start_date", "registered when"),
    Item("registrations", "end_date", "registered when"),
    Item("registrations", "practice", "counts by practice"),
    Item("clinical_events", "patient", "diagnoses"),
    Item("clinical_events", "code", "diagnoses"),
    Item("clinical_events", "effective_date", "when"),
    Item("clinical_events", "staff", "who recorded it: workload"),
)
PERIOD = (date(2016, 1, 1), date(2026, 1, 1))

STUDY = """
from gpdpr.tre.language import *

htn = codelist_from_csv("htn.csv")
index = "2025-01-01"
dataset = Dataset()
registered = practice_registrations.for_patient_on(index)
dataset.define_population(registered.exists_for_patient() & (patients.age_on(index) >= 18))
dataset.sex = patients.sex
dataset.htn = clinical_events.where(clinical_events.code.is_in(htn)).exists_for_patient()
dataset.add_table("htn_by_sex", by=["sex", "htn"])

measures = Measures()
measures.define_measure(
    "htn_monthly",
    numerator=clinical_events.where(
        clinical_events.code.is_in(htn) & clinical_events.effective_date.is_during(INTERVAL)
    ).exists_for_patient(),
    denominator=practice_registrations.for_patient_on(INTERVAL.start_date).exists_for_patient(),
    group_by={"practice": practice_registrations.for_patient_on(INTERVAL.start_date).practice},
    intervals=months(6).starting_on("2025-01-01"),
)
"""


@dataclass
class Service:
    home: Path
    engine: sa.Engine
    practices: Path
    study: Path
    applied: str  # an agreement applying the National Data Opt-out
    exempt: str  # an agreement exempt from it (communicable disease control)


def approve(engine: sa.Engine, **changes: object) -> str:
    """A new application taken through the panel to an agreement in force; its reference."""
    reference = act(engine, lambda s: applications.create_draft(s, LEAD, form(**changes)).reference)
    act(engine, lambda s: applications.submit(s, LEAD, reference))
    act(engine, lambda s: panel.start_review(s, ADMIN, reference))
    votes(engine, reference)
    act(engine, lambda s: panel.decide(s, ADMIN, reference, "Approved."))
    act(engine, lambda s: agreements.issue(s, ADMIN, reference))
    found = agreement_of(engine, reference)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from gpdpr.collect.service import Central, collect

    home = tmp_path_factory.mktemp("tre") / "home"
    home.mkdir()
    nation(home / "practices", home / "keys", home / "packages", 2, 4_000, 11)
    collect(Central(home), sorted(p for p in (home / "packages").iterdir()))
    engine = connect(url_for_home(home))
    cast(engine)
    common = {"items": ITEMS, "data_from": PERIOD[0], "data_to": PERIOD[1], "team": (COLLEAGUE,)}
    applied = approve(engine, population=Population(min_age=18), **common)
    exempt = approve(
        engine,
        title="Influenza surveillance",
        population=Population(),
        ndoo_exemption="communicable_disease",
        ndoo_exemption_reason="Outbreak monitoring under the Health Protection Regulations.",
        **common,
    )
    folder = home.parent / "study"
    folder.mkdir()
    (folder / "htn.csv").write_text("code,term\n59621000,Essential hypertension\n")
    (folder / "study.py").write_text(STUDY)
    yield Service(home, engine, home / "practices", folder / "study.py", applied, exempt)
    engine.dispose()


def document(service: Service, body: str | None = None) -> bytes:
    path = service.study
    if body is not None:
        path = service.study.with_name("other.py")
        path.write_text(textwrap.dedent(body))
    return runs.compile_file(path)


def runs_in_db(service: Service) -> list[tuple[str, str, str]]:
    with service.engine.connect() as connection:
        return [
            (r.reference, r.status, r.message)
            for r in connection.execute(sa.select(Run.reference, Run.status, Run.message))
        ]


# ---- a run, and what it leaves --------------------------------------------------------------


def test_a_run_writes_controlled_files_and_is_recorded_with_its_definition_and_lake_version(
    service: Service,
) -> None:
    made = runs.submit(service.home, LEAD, service.applied, document(service))
    assert set(made.outputs) == {"measure_htn_monthly.csv", "table_htn_by_sex.csv"}
    published: list[int] = []
    for name in made.outputs:
        table = pacsv.read_csv(made.folder / runs.OUTPUTS / name)
        for column in ("numerator", "denominator", "patients"):
            if column in table.column_names:
                published += [v for v in table.column(column).to_pylist() if v is not None]
    assert len(published) > 10 and all(v % 5 == 0 and v > 7 for v in published)
    lake_version = Lake.open(service.home / "lake").latest().number
    assert made.lake_version == lake_version
    with service.engine.connect() as connection:
        run = connection.execute(sa.select(Run).where(Run.reference == made.reference)).one()
        event = connection.execute(
            sa.select(Event.details).where(Event.kind == "tre.run").order_by(Event.id.desc())
        ).first()
    assert run.status == "succeeded" and run.lake_version == lake_version
    assert run.definition_sha256 == serial.sha256(document(service))
    assert event is not None and event.details["definition_sha256"] == run.definition_sha256
    assert (made.folder / runs.DEFINITION).read_bytes() == document(service)


def test_a_definition_reading_outside_the_agreement_is_refused_before_any_data_is_read(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a view was built for a refused definition")

    monkeypatch.setattr(views, "build", must_not_run)
    outside = """
        from gpdpr.tre.language import *
        measures = Measures()
        measures.define_measure(
            "statins",
            numerator=medications.where(medications.issue_date.is_during(INTERVAL)).exists_for_patient(),
            denominator=patients.exists_for_patient(),
            intervals=months(1).starting_on("2025-01-01"),
        )
    """
    with pytest.raises(
        NotAllowed, match=r"to medications\.issue_date, medications\.patient: outside"
    ):
        runs.submit(service.home, LEAD, service.applied, document(service, outside))
    assert runs_in_db(service)[-1][1] == "refused"


@pytest.mark.parametrize("who", [VENDOR, BOTH])
def test_only_the_projects_team_may_run(service: Service, who: str) -> None:
    with pytest.raises(NotAllowed, match=f"{who} is not named on its team"):
        runs.submit(service.home, who, service.applied, document(service))


def test_a_run_after_the_agreement_ends_or_is_revoked_is_refused(service: Service) -> None:
    ended = datetime(2040, 1, 1, tzinfo=UTC)
    with pytest.raises(NotAllowed, match="it ended on"):
        runs.submit(service.home, LEAD, service.applied, document(service), at=ended)
    revoked = approve(service.engine, items=ITEMS, data_from=PERIOD[0], data_to=PERIOD[1])
    act(service.engine, lambda s: agreements.revoke(s, ADMIN, revoked, "data breach"))
    with pytest.raises(NotAllowed, match="it was revoked"):
        runs.submit(service.home, LEAD, revoked, document(service))


def test_an_empty_population_on_real_data_answers_like_any_other_run(service: Service) -> None:
    """Attack: ask whether anyone meets a condition (here, nobody can) and read the answer from
    the run's status or error before any checker sees it. A real run says nothing of the sort:
    it succeeds, as a run with people does, and its files publish nothing."""
    nobody = STUDY.replace(">= 18)", ">= 180)")
    empty = runs.submit(service.home, LEAD, service.applied, document(service, nobody))
    full = runs.submit(service.home, LEAD, service.applied, document(service))
    recorded = {reference: (status, message) for reference, status, message in runs_in_db(service)}
    assert recorded[empty.reference] == recorded[full.reference] == ("succeeded", "")
    assert set(empty.outputs) == set(full.outputs)
    for name in empty.outputs:
        published = pacsv.read_csv(empty.folder / "outputs" / name).to_pylist()
        counts = [r.get("numerator") or r.get("patients") for r in published]
        assert not any(counts), f"{name} published a count of an empty population: {published}"


def test_an_engine_failure_is_recorded_but_its_words_are_not_shown(service: Service) -> None:
    """An engine's error can depend on one person's value (an overflow, a time limit): the
    researcher learns only that the run failed; the service's staff find the error in the
    record."""

    class Failing:
        name = "duckdb"

        def run(self, definition: object, views: object) -> Results:
            raise RuntimeError("Conversion Error: value 99999 of patient X is out of range")

    with pytest.raises(UserError) as refused:
        runs.submit(service.home, LEAD, service.applied, document(service), Failing())
    assert "99999" not in str(refused.value) and "patient X" not in str(refused.value)
    reference, status, message = runs_in_db(service)[-1]
    assert (status, reference in str(refused.value)) == ("failed", True)
    assert "99999" in message
    assert not list((service.home / runs.RUNS).glob(".pending-*"))


def test_a_run_killed_mid_way_leaves_nothing_behind(service: Service) -> None:
    """A run whose process died after writing its files but before it was recorded leaves a
    `.pending-` folder; the next run removes it (its process is gone), and never removes the
    folder of a run still going in a live process."""
    folder = service.home / runs.RUNS
    folder.mkdir(parents=True, exist_ok=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stray = folder / f".pending-{dead.stdout.strip()}-0123abcd"
    (stray / "outputs").mkdir(parents=True)
    (stray / "outputs" / "measure_x.csv").write_text("secret\n")
    live = folder / f".pending-{os.getpid()}-4567ef01"
    live.mkdir()
    runs.submit(service.home, LEAD, service.applied, document(service))
    assert not stray.exists()
    assert live.exists()
    live.rmdir()


# ---- the project's view ----------------------------------------------------------------------

USED = {
    "patients": {"sex", "date_of_birth"},
    "practice_registrations": {"start_date"},
    "clinical_events": {"code", "effective_date", "staff"},
}


def view_under(service: Service, reference: str) -> dict[str, pa.Table]:
    with sa.orm.Session(service.engine) as session:
        scope = agreements.authorise(session, LEAD, reference, views.required_fields(USED))
    version = Lake.open(service.home / "lake").latest().number
    return runs.project_views(service.home, service.engine, scope, LEAD, USED, version)


def lake_pseudonyms(service: Service) -> set[str]:
    snapshot = Lake.open(service.home / "lake").snapshot()
    return set(snapshot.read("patients", ["patient"]).column("patient").to_pylist())


def test_views_keep_to_the_period_and_population_and_show_only_columns_used(
    service: Service,
) -> None:
    seen = view_under(service, service.applied)
    events = seen["clinical_events"]
    assert set(events.column_names) == {
        "patient_id",
        "patient_key",
        "code",
        "effective_date",
        "staff",
    }
    days = events.column("effective_date").to_pylist()
    assert min(days) >= PERIOD[0] and max(days) < PERIOD[1]
    born = [d for d in seen["patients"].column("date_of_birth").to_pylist()]
    assert all(d is not None and (PERIOD[1].year - d.year) >= 18 for d in born)
    everyone = view_under(service, service.exempt)["patients"]  # no age restriction there
    assert everyone.num_rows > seen["patients"].num_rows


def test_two_projects_share_no_pseudonym_and_neither_sees_the_lakes(service: Service) -> None:
    first, second = view_under(service, service.applied), view_under(service, service.exempt)
    lake = lake_pseudonyms(service)
    a = set(first["patients"].column("patient_id").to_pylist())
    b = set(second["patients"].column("patient_id").to_pylist())
    assert a and b and not a & b and not a & lake and not b & lake
    staff_a = set(first["clinical_events"].column("staff").to_pylist()) - {None}
    staff_b = set(second["clinical_events"].column("staff").to_pylist()) - {None}
    assert staff_a and not staff_a & staff_b


def test_the_national_data_opt_out_applies_unless_the_agreement_is_exempt(
    service: Service,
) -> None:
    before_applied = view_under(service, service.applied)["patients"].num_rows
    before_exempt = view_under(service, service.exempt)["patients"].num_rows
    snapshot = Lake.open(service.home / "lake").snapshot()
    adults = snapshot.read("patients", ["patient", "birth_year"]).filter(
        pa.compute.less(pa.compute.field("birth_year"), 1990)
    )
    chosen = adults.column("patient").to_pylist()[:25]
    registry = Registry(service.engine)
    for pseudonym in chosen:
        registry.set(pseudonym, "ndoo", "online")
    try:
        assert view_under(service, service.applied)["patients"].num_rows == before_applied - 25
        assert view_under(service, service.exempt)["patients"].num_rows == before_exempt
        registry.set(chosen[0], "type1", "online")  # awaiting erasure: gone from every view
        assert view_under(service, service.exempt)["patients"].num_rows == before_exempt - 1
    finally:
        for pseudonym in chosen:
            registry.withdraw(pseudonym, "ndoo", "online")
        registry.withdraw(chosen[0], "type1", "online")


def test_a_result_seen_inside_cannot_be_set_beside_the_same_question_one_person_later(
    service: Service,
) -> None:
    """Attack: look at a run's results inside the environment, have one person leave the view
    (here by a National Data Opt-out; a new lake version does the same) and run the same
    question again: any count that moved by that one person is the person. The second run's
    files that could be subtracted from the first are withheld, for the author and for anyone of
    their organisation; the first stays visible as it was."""
    study = STUDY.replace(">= 18)", ">= 21)")  # a question of this test's own
    first = runs.submit(service.home, LEAD, service.applied, document(service, study))
    with Session(service.engine) as session, session.begin():
        shown = runs.visible_outputs(session, service.home, LEAD, first.reference)
    assert shown and None not in shown.values()
    snapshot = Lake.open(service.home / "lake").snapshot()
    people = snapshot.read("patients", ["patient", "birth_year", "death_year"]).to_pylist()
    current = snapshot.read("registrations", ["patient", "start_date", "end_date"]).to_pylist()
    registered = {r["patient"] for r in current if r["end_date"] is None}
    target = next(
        p["patient"]
        for p in people
        if p["birth_year"] < 1990 and p["death_year"] is None and p["patient"] in registered
    )
    registry = Registry(service.engine)
    registry.set(target, "ndoo", "online")
    try:
        again = runs.submit(service.home, LEAD, service.applied, document(service, study))
        with Session(service.engine) as session, session.begin():
            later = runs.visible_outputs(session, service.home, LEAD, again.reference)
            colleague = runs.visible_outputs(session, service.home, COLLEAGUE, again.reference)
            earlier = runs.visible_outputs(session, service.home, LEAD, first.reference)
        assert None in later.values(), "a count moved by one person was shown"
        assert {k for k, v in colleague.items() if v is None} >= {
            k for k, v in later.items() if v is None
        }
        assert earlier == shown
        code, out = invoke(service, "tre", "show", again.reference, "--as", LEAD)
        assert code == 0 and "withheld" in out, out
    finally:
        registry.withdraw(target, "ndoo", "online")


def test_a_release_request_cannot_leave_cells_out_of_the_differencing_check(
    service: Service,
) -> None:
    """The cells a request is checked by come from the caller (read from the run's folder): a
    caller that gave fewer, or other, cells than the run recorded would skip the check. The
    run records their digest, and a request with any other cells is refused."""
    from gpdpr.tre.release import checking

    made = runs.submit(service.home, LEAD, service.applied, document(service))
    name = sorted(made.outputs)[0]
    body = (made.folder / "outputs" / name).read_bytes()
    files = {name: (hashlib.sha256(body).hexdigest(), len(body))}
    cells = runs.cells_of(service.home, made.reference, {name})
    assert cells
    for given in ([], cells[1:], [replace(cells[0], raw=cells[0].raw + 1), *cells[1:]]):
        with (
            Session(service.engine) as session,
            session.begin(),
            pytest.raises(NotAllowed, match="not those"),
        ):
            checking.request_release(session, LEAD, made.reference, files, "T", "", given)


# ---- from the command line, to the register ---------------------------------------------------


def invoke(service: Service, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--home", str(service.home)])
    return result.exit_code, result.output


def test_submit_request_review_and_publish_from_the_command_line(service: Service) -> None:
    code, out = invoke(
        service, "tre", "submit", str(service.study), "--agreement", service.applied, "--as", LEAD
    )
    assert code == 0, out
    run = out.split(":")[0].split()[-1]
    assert run.startswith("RUN-")
    measure = "measure_htn_monthly.csv"
    code, out = invoke(
        service,
        "tre",
        "request",
        run,
        "--file",
        measure,
        "--title",
        "Hypertension by month",
        "--as",
        LEAD,
    )
    assert code == 0, out
    request = out.split(":")[0].strip()
    code, out = invoke(service, "tre", "review", "approve", request, measure, "--as", BOTH)
    assert code == 2 and "organisation" in out  # from the author's organisation
    for checker in CHECKERS:
        code, out = invoke(service, "tre", "review", "approve", request, measure, "--as", checker)
        assert code == 0, out
    published = list((service.home / "register" / "releases").glob(f"*/{measure}"))
    assert len(published) == 1
    assert (
        published[0].read_bytes()
        == (runs.run_folder(service.home, run) / "outputs" / measure).read_bytes()
    )
    assert (published[0].parent / "definition.json").read_bytes() == document(service)
    register = orjson.loads((service.home / "register" / "register.json").read_bytes())
    text = orjson.dumps(register).decode()
    assert run in text and '"lake_version"' in text


def test_a_tampered_json_definition_is_refused_at_submission(
    service: Service, tmp_path: Path
) -> None:
    raw = orjson.loads(document(service))
    for node in raw["nodes"]:
        if node["node"] == "Column" and node["name"] == "sex":
            node["name"] = "record_id"
    path = tmp_path / "study.json"
    path.write_bytes(orjson.dumps(raw))
    code, out = invoke(
        service, "tre", "submit", str(path), "--agreement", service.applied, "--as", LEAD
    )
    assert code == 2 and "has no column 'record_id'" in out


def test_nothing_that_names_a_person_reaches_outputs_or_the_register(service: Service) -> None:
    """Canaries: the practices' NHS numbers and names, the lake's pseudonyms and the projects'
    pseudonyms must appear nowhere in the run folders or the published register."""
    runs.submit(service.home, LEAD, service.applied, document(service))
    people = pa.concat_tables(
        pq.read_table(p / "patients.parquet", columns=["nhs_number", "given_name", "family_name"])
        for p in sorted(service.practices.iterdir())
        if p.is_dir()
    )
    canaries = {v for c in people.columns for v in c.to_pylist() if v and len(v) >= 6}
    canaries |= lake_pseudonyms(service)
    for reference in (service.applied, service.exempt):
        canaries |= set(view_under(service, reference)["patients"].column("patient_id").to_pylist())
    assert len(canaries) > 1000
    scanned = 0
    for folder in (service.home / "tre", service.home / "register"):
        for path in folder.rglob("*"):
            if path.is_file():
                body = path.read_bytes()
                scanned += 1
                found = [c for c in canaries if c.encode() in body]
                assert not found, f"{path} holds {found[:3]}"
    assert scanned >= 4  # a run: two outputs, its definition and the cells kept inside
