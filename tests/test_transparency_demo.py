"""The transparency log over the demo's scenario, run through the service's own functions (as
`gpdpr demo` runs them) on a small nation: every kind of event the log promises is in it; the
log holds no person and no patient; a patient sees exactly the approved projects whose runs read
their record; and anyone can verify the published copy, from a folder or over HTTP."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from gpdpr import cli
from gpdpr.collect.service import Central, collect
from gpdpr.custodian.central import Custodian
from gpdpr.db import connect, url_for_home
from gpdpr.governance import agreements
from gpdpr.governance.models import Agreement
from gpdpr.governance.sample import ADMIN, DIABETES, PEOPLE, WINTER
from gpdpr.lake.store import Lake
from gpdpr.transparency import store, uses
from gpdpr.transparency.demo import demo_witness
from gpdpr.transparency.patient import record_uses
from gpdpr.transparency.publish import log_folder, publish
from gpdpr.tre import runs
from gpdpr.tre.demo import AUTHOR, CHECKERS, example
from gpdpr.tre.models import Run
from gpdpr.tre.release import checking

runner = CliRunner()


@dataclass
class Demo:
    home: Path
    engine: sa.Engine
    nhs_numbers: list[str]  # every patient's, across the practices
    opted_out: list[str]  # the three who opted out online in the demo's step 4
    entries: list[dict[str, Any]]


def _agreement(engine: sa.Engine, title: str) -> str:
    with Session(engine) as session:
        found: str | None = session.scalar(
            sa.select(Agreement.reference)
            .join(Agreement.application)
            .where(Agreement.application.property.mapper.class_.title == title)
        )
    assert found is not None
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    from gpdpr.synth.run import SynthRequest, synthesise

    home = tmp_path_factory.mktemp("demo") / "home"
    home.mkdir()
    practices = home / "practices"
    synthesise(SynthRequest(practices, 2, 4_000, 7, "columnar", mess_rate=0))
    cli._demo_extract(home, practices)
    cli._demo_collect(home)
    cli._demo_erase(home, practices)
    cli._demo_governance(home)
    cli._demo_research(home)
    engine = connect(url_for_home(home))
    numbers = [
        n
        for folder in sorted(p for p in practices.iterdir() if p.is_dir())
        for n in pq.read_table(folder / "patients.parquet", columns=["nhs_number"])[
            "nhs_number"
        ].to_pylist()
    ]
    first = sorted(p for p in practices.iterdir() if p.is_dir())[0]
    opted_out = pq.read_table(first / "patients.parquet", columns=["nhs_number"])[
        "nhs_number"
    ].to_pylist()[:3]

    # What the demo does not do, done the same way: a package refused, a second run whose
    # release is rejected, a re-identification, an agreement revoked and one expired.
    junk = home / "junk-package"
    junk.mkdir()
    (junk / "manifest.json").write_text("{}")
    collect(Central(home), [junk])
    diabetes = _agreement(engine, DIABETES.title)
    made = runs.submit(home, AUTHOR, diabetes, runs.compile_file(example() / "study.py"))
    name = sorted(made.outputs)[0]
    about = made.outputs[name]
    with Session(engine) as session, session.begin():
        request = checking.request_release(
            session,
            AUTHOR,
            made.reference,
            {name: (about["sha256"], about["bytes"])},
            "Again",
            "The same file again.",
            runs.cells_of(home, made.reference, {name}),
        )
        reference = request.reference
    with Session(engine) as session, session.begin():
        checking.review(session, CHECKERS[0], reference, name, "reject", "a second copy")
    custodian = Custodian(home / "keys", engine)
    with Session(engine) as session:
        project = session.scalar(
            sa.select(Agreement).where(Agreement.reference == diabetes)
        ).application.reference  # type: ignore[union-attr]
    asked = custodian.request_reidentification(
        project, "consent", "a participant asked to be contacted", numbers[5:6], AUTHOR
    )
    custodian.approve(asked, "panel.lay")
    custodian.approve(asked, "panel.ethics")
    custodian.fulfil(asked, numbers[5:6], "custodian")
    with Session(engine) as session, session.begin():
        agreements.revoke(session, ADMIN, _agreement(engine, WINTER.title), "breach of terms")
    with Session(engine) as session, session.begin():
        agreements.expire_due(session, datetime.now(UTC) + timedelta(days=3650))

    demo_witness(home)
    publish(home, engine, datetime.now(UTC) + timedelta(days=1))  # the day's counts too
    contents = store.read(log_folder(home))
    entries = [contents.entry(seq) for seq in range(contents.size)]
    yield Demo(home, engine, numbers, opted_out, entries)
    engine.dispose()


def of_type(demo: Demo, kind: str) -> list[dict[str, Any]]:
    return [e for e in demo.entries if e["type"] == kind]


def test_every_kind_of_event_the_log_promises_is_in_it(demo: Demo) -> None:
    for kind in (
        "spec.version",
        "package.loaded",
        "package.refused",
        "optout.daily",
        "erasure",
        "application.submitted",
        "application.refused",
        "panel.decision",
        "agreement.issued",
        "agreement.revoked",
        "agreement.expired",
        "tre.run",
        "release.requested",
        "release.reviewed",
        "release.published",
        "reid.requested",
        "reid.approved",
        "reid.fulfilled",
    ):
        assert of_type(demo, kind), f"no {kind} entry in the log"
    loaded = of_type(demo, "package.loaded")[0]["details"]
    assert loaded["practice"] and sum(loaded["rows"].values()) > 0
    refused = of_type(demo, "package.refused")[0]["details"]
    assert refused["package"] == "junk-package" and "junk-package" in refused["reason"]
    assert str(demo.home) not in refused["reason"]  # no folder of the service's disks
    [daily] = of_type(demo, "optout.daily")
    assert daily["details"]["type1"]["set"] >= 3  # the three online, and any from practices
    [erasure] = of_type(demo, "erasure")
    people = erasure["details"]["people"]  # totals only, and only for ten people or more
    assert set(erasure["details"]) <= {"lake_version", "people", "rows_removed"}
    assert people == "fewer than 10" or (people >= 10 and erasure["details"]["rows_removed"] > 0)
    run = of_type(demo, "tre.run")[0]["details"]
    assert set(run) >= {"project", "definition_sha256", "lake_version"}
    assert run["lake_version"] == Lake.open(demo.home / "lake").latest().number
    decisions = {e["details"]["decision"] for e in of_type(demo, "release.reviewed")}
    assert decisions == {"approve", "reject"}
    published = of_type(demo, "release.published")[0]
    assert published["details"]["files"] and published["actor"]["role"] == "output checkers"
    decided = {e["details"]["outcome"] for e in of_type(demo, "panel.decision")}
    assert decided == {"approved", "refused"}


def test_the_log_holds_no_person_and_no_patient(demo: Demo) -> None:
    text = (log_folder(demo.home) / store.ENTRIES).read_bytes()
    for number in demo.nhs_numbers:
        assert number.encode() not in text
    lake = Lake.open(demo.home / "lake").snapshot()
    pseudonyms = set(lake.read("patients", ["patient"]).column("patient").to_pylist())
    custodian = Custodian(demo.home / "keys", demo.engine)
    erased = [custodian.pseudonym_for(n, "test", "test") for n in demo.opted_out]
    assert len(pseudonyms) > 1000
    for pseudonym in pseudonyms | set(erased):
        assert pseudonym.encode() not in text
    for handle, name, _, _ in PEOPLE:
        assert f'"{handle}"'.encode() not in text and name.encode() not in text
    assert b"@example.org" not in text


def _included(demo: Demo) -> tuple[str, Any]:
    custodian = Custodian(demo.home / "keys", demo.engine)
    for number in demo.nhs_numbers[10:400]:
        uses = record_uses(
            custodian, custodian.pseudonym_for(number, "portal", "patient view"), demo.home
        )
        if uses.projects:
            return number, uses
    raise AssertionError("no patient's record was read by any run")


def test_a_patient_sees_the_projects_whose_runs_read_their_record(demo: Demo) -> None:
    _, uses = _included(demo)
    [project] = uses.projects
    assert project.title == DIABETES.title
    assert project.register_entry["agreement"] == project.agreement
    assert project.organisations and project.starts_on and project.ends_on
    with Session(demo.engine) as session:
        ran = session.scalars(sa.select(Run.reference).where(Run.status == "succeeded")).all()
    assert [r.reference for r in project.runs] == list(ran)  # both diabetes runs
    assert set(uses.opt_outs) == {"type1", "ndoo"}
    assert uses.opt_outs["type1"]["state"] == "never"


def test_someone_who_opted_out_was_read_by_no_run_and_sees_their_opt_out(demo: Demo) -> None:
    custodian = Custodian(demo.home / "keys", demo.engine)
    for number in demo.opted_out:
        uses = record_uses(
            custodian, custodian.pseudonym_for(number, "portal", "patient view"), demo.home
        )
        assert uses.projects == []
        assert uses.opt_outs["type1"]["state"] == "set"
        assert [h["source"] for h in uses.opt_outs["type1"]["history"]] == ["online"]


def test_whom_runs_read_cannot_be_read_without_the_custodian(demo: Demo) -> None:
    """Each run's folder keeps a token per person it read: none is a lake pseudonym or any part
    of one, and no token repeats across runs (so runs cannot be linked person by person)."""
    kept = sorted((demo.home / "tre" / "runs").glob(f"RUN-*/{uses.FILE}"))
    assert kept, "the demo's runs kept whom they read"
    tokens: list[bytes] = []
    for path in kept:
        body = path.read_bytes()[len(uses.HEADER) :]
        tokens += [body[i : i + 16] for i in range(0, len(body), 16)]
    assert tokens and len(set(tokens)) == len(tokens)
    lake = Lake.open(demo.home / "lake").snapshot()
    pseudonyms = set(lake.read("patients", ["patient"]).column("patient").to_pylist())
    whole = b"".join(p.read_bytes() for p in kept)
    for pseudonym in pseudonyms:
        assert pseudonym.encode() not in whole and bytes.fromhex(pseudonym)[:8] not in whole


def test_anyone_verifies_a_copy_of_the_published_log_and_proves_an_entry(
    demo: Demo, tmp_path: Path
) -> None:
    copy = tmp_path / "mirror"
    shutil.copytree(log_folder(demo.home), copy)
    pinned = ["--policy", str(demo.home / "keys" / "log" / "policy")]
    result = runner.invoke(cli.app, ["log", "verify", "--log-dir", str(copy), *pinned])
    assert result.exit_code == 0, result.output
    assert f"{len(demo.entries):,} entries" in result.output
    kept = tmp_path / "kept-checkpoint"
    shutil.copyfile(copy / store.CHECKPOINT, kept)
    result = runner.invoke(
        cli.app, ["log", "verify", "--log-dir", str(copy), "--checkpoint", str(kept), *pinned]
    )
    assert result.exit_code == 0 and "consistent" in result.output, result.output
    seq = next(i for i, e in enumerate(demo.entries) if e["type"] == "tre.run")
    result = runner.invoke(cli.app, ["log", "prove", str(seq), "--log-dir", str(copy)])
    assert result.exit_code == 0 and "included" in result.output, result.output
    assert "definition_sha256" in result.output


def test_a_log_served_over_http_verifies_and_a_tampered_one_does_not(
    demo: Demo, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    shutil.copytree(log_folder(demo.home), served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        pinned = ["--policy", str(demo.home / "keys" / "log" / "policy")]
        result = runner.invoke(cli.app, ["log", "verify", "--url", url, *pinned])
        assert result.exit_code == 0, result.output
        lines = (served / store.ENTRIES).read_bytes().splitlines(keepends=True)
        (served / store.ENTRIES).write_bytes(b"".join(lines[:3] + lines[4:]))
        result = runner.invoke(cli.app, ["log", "verify", "--url", url, *pinned])
        assert result.exit_code == 2 and "does NOT verify" in result.output
    finally:
        server.shutdown()
        server.server_close()


def test_every_central_command_publishes_and_none_runs_on_a_damaged_log(
    demo: Demo, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(demo.home, home, ignore=shutil.ignore_patterns("practices", "lake"))
    before = store.read(log_folder(home)).size
    result = runner.invoke(
        cli.app,
        [
            "governance",
            "org",
            "add",
            "Leeds Teaching Hospitals",
            "--kind",
            "nhs_body",
            "--as",
            ADMIN,
            "--home",
            str(home),
        ],
    )
    assert result.exit_code == 0, result.output
    contents = store.read(log_folder(home))
    assert contents.size == before + 1
    assert contents.entry(before)["type"] == "governance.organisation"
    entries_file = log_folder(home) / store.ENTRIES
    lines = entries_file.read_bytes().splitlines(keepends=True)
    entries_file.write_bytes(b"".join(lines[:2] + lines[3:]))
    result = runner.invoke(cli.app, ["governance", "orgs", "--home", str(home)])
    assert result.exit_code == 2
    assert "does not verify" in result.output and "Nothing was done" in result.output


def test_my_record_shows_a_patient_their_projects(demo: Demo, tmp_path: Path) -> None:
    number, uses = _included(demo)
    home = tmp_path / "home"
    shutil.copytree(demo.home, home, ignore=shutil.ignore_patterns("practices", "lake"))
    result = runner.invoke(
        cli.app, ["log", "my-record", "--nhs-number", number, "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    assert DIABETES.title in result.output and uses.projects[0].runs[0].reference in result.output
    result = runner.invoke(
        cli.app, ["log", "my-record", "--nhs-number", "123", "--home", str(home)]
    )
    assert result.exit_code == 2 and "not a valid NHS number" in result.output
    # A valid number the service never held: told so, not told "nobody used it" alone.
    never = "9434765919"
    result = runner.invoke(
        cli.app, ["log", "my-record", "--nhs-number", never, "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    assert "We hold nothing about you: no GP practice has sent a record" in result.output


# What is not the central service's: the GP systems' own data, the key custodian's keys (kept
# apart, scanned for in tests/test_privacy.py), the identity provider's accounts (NHS login's
# stand-in: in a deployment it is NHS England's, and holds NHS numbers by design), and the junk
# package the fixture made.
NOT_CENTRAL = ("practices", "keys", "idp", "junk-package")


def test_nothing_the_centre_stores_or_publishes_identifies_a_patient(demo: Demo) -> None:
    """After the whole scenario (collection, erasure, governance, runs, releases, a
    re-identification, the log): every file of the service's home, byte for byte and every
    Parquet file decoded, holds no patient's NHS number (plain or spaced), name, address,
    full postcode, phone number or email address."""
    from test_privacy import _as_text, _automaton, _found

    needles: set[str] = set()
    for folder in sorted(p for p in (demo.home / "practices").iterdir() if p.is_dir()):
        people = pq.read_table(folder / "patients.parquet").to_pylist()
        for person in people:
            number = person["nhs_number"]
            needles |= {number, f"{number[:3]} {number[3:6]} {number[6:]}"}
            needles.add(f"{person['given_name']} {person['family_name']}")
            for field in ("address_line_1", "phone", "email", "postcode"):
                if person[field] and len(person[field]) > 5:
                    needles.add(person[field])
    assert len(needles) > 4 * len(demo.nhs_numbers)  # numbers both ways, names, and more
    automaton = _automaton(needles)
    files = [
        p
        for p in demo.home.rglob("*")
        if p.is_file() and p.relative_to(demo.home).parts[0] not in NOT_CENTRAL
    ]
    kinds = {p.relative_to(demo.home).parts[0] for p in files}
    assert {"lake", "log", "register", "tre", "central.db"} <= kinds, kinds
    for path in files:
        found = _found(automaton, path.read_bytes())
        assert not found, f"{path.relative_to(demo.home)} holds {found[:5]}"
        if path.suffix == ".parquet":
            found = _found(automaton, _as_text(pq.read_table(path)))
            assert not found, f"decoded {path.relative_to(demo.home)} holds {found[:5]}"


def test_no_erased_person_survives_anywhere_in_the_home(demo: Demo) -> None:
    """The three who opted out online were erased: their lake pseudonyms are in no file the
    centre keeps (lake and its old versions, refused packages, runs, releases, the log, caches),
    byte for byte and every Parquet file decoded. Not walked: the database, whose opt-out
    register must name who opted out to keep their future records out (their dissent, not their
    record), and what NOT_CENTRAL lists."""
    from test_privacy import _as_text, _automaton, _found

    custodian = Custodian(demo.home / "keys", demo.engine)
    erased = {custodian.pseudonym_for(n, "patient", "erasure check") for n in demo.opted_out}
    lake = Lake.open(demo.home / "lake").snapshot()
    held = set(lake.read("patients", ["patient"]).column("patient").to_pylist())
    assert len(erased) == 3 and not erased & held
    # and as numbers (lake.tables.PERSON: the first 32 hex digits, as bytes; decoded as hex)
    automaton = _automaton(erased | {e[:32] for e in erased})
    files = [
        p
        for p in demo.home.rglob("*")
        if p.is_file()
        and p.relative_to(demo.home).parts[0] not in NOT_CENTRAL
        and not p.name.startswith("central.db")
    ]
    assert len(files) > 20
    for path in files:
        found = _found(automaton, path.read_bytes())
        assert not found, f"{path.relative_to(demo.home)} holds an erased pseudonym"
        if path.suffix == ".parquet":  # a pseudonym is text or bytes: only those are decoded
            schema = pq.read_schema(path)
            text = [
                f.name
                for f in schema
                if pa.types.is_string(f.type)
                or pa.types.is_large_string(f.type)
                or pa.types.is_dictionary(f.type)
                or pa.types.is_binary(f.type)
                or isinstance(f.type, pa.BaseExtensionType)  # a UUID: a person's number
            ]
            found = _found(automaton, _as_text(pq.read_table(path, columns=text)))
            assert not found, f"decoded {path.relative_to(demo.home)} holds an erased pseudonym"
