"""Nothing erased survives anywhere: after a whole cycle (collect, a research run with a
dataset, a release, a dummy run, a refused package), people
who opt out are erased by `gpdpr erase`, and then no file under the home holds any form of them
(their lake pseudonym, its hash, their project pseudonym, any run's use token of them, as text
or as bytes, raw or decoded), except the opt-out itself and its receipt. Someone else is still
found everywhere they were, so the scan can fail."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from extracting import nation
from governing import ADMIN, CHECKERS, COLLEAGUE, LEAD, act, agreement_of, cast, form, votes
from gpdpr.cli import app
from gpdpr.collect.service import Central, collect
from gpdpr.custodian.central import Custodian, project_pseudonyms, run_use_token, use_token
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.governance import agreements, applications, panel
from gpdpr.governance.form import Item, Population
from gpdpr.lake.query import connect as lake_sql
from gpdpr.lake.store import Lake
from gpdpr.optout.registry import Registry
from gpdpr.transparency import uses
from gpdpr.transparency.models import RunUse
from gpdpr.tre import dummy, runs
from gpdpr.tre.engines.duckdb import DuckDBEngine
from gpdpr.tre.query import nodes
from gpdpr.tre.query.serial import from_json
from home_scan import Hit, Needle, scan
from portal_home import study

ITEMS = tuple(
    Item(table, column, "the study")
    for table, column in [
        ("patients", "patient"),
        ("patients", "sex"),
        ("patients", "birth_year"),
        ("patients", "birth_month"),
        ("registrations", "patient"),
        ("registrations", "start_date"),
        ("registrations", "end_date"),
        ("registrations", "practice"),
        ("clinical_events", "patient"),
        ("clinical_events", "code"),
        ("clinical_events", "effective_date"),
    ]
)
STUDY = study("by_sex", 18)  # the portal tests' study, its table named for this test
TABLE = "table_by_sex.csv"
ERASED = 3
# Where the opt-out itself is kept (by lake pseudonym, to keep them out of every later load)
# and its receipt and public record (by the pseudonym's hash): what erasure must leave.
REGISTRY = {"opt_out_events": frozenset({"pseudonym"})}
RECEIPT = {"deletion_receipts": frozenset({"pseudonym_hash"}), "events": frozenset({"details"})}


@dataclass
class Person:
    lake: str  # lake pseudonym
    project: str  # their pseudonym in the study's project
    tokens: list[str]  # each run's use token of them (hex)

    def needles(self, label: str, kept: bool = False) -> list[Needle]:
        """Every form of them; `kept`: with where an erased person's opt-out is kept."""
        digest = hashlib.sha256(self.lake.encode()).hexdigest()
        made = [
            Needle(self.lake.encode(), f"{label}: lake pseudonym", REGISTRY if kept else {}),
            Needle(digest.encode(), f"{label}: its hash", RECEIPT if kept else {}),
            Needle(bytes.fromhex(self.lake[:32]), f"{label}: lake pseudonym, as a number"),
            Needle(self.project.encode(), f"{label}: project pseudonym"),
        ]
        for n, token in enumerate(self.tokens):
            made += [
                Needle(token.encode(), f"{label}: token {n}"),
                Needle(token[:32].encode(), f"{label}: token {n}, half"),
                Needle(bytes.fromhex(token[:32]), f"{label}: token {n}, as kept"),
            ]
        return made


@dataclass
class Home:
    home: Path
    engine: sa.Engine
    erased: list[Person]
    other: Person
    waiting: Path  # a package copy, to wait in the inbox while the cycle runs


def _approve(engine: sa.Engine) -> str:
    """An application for the study taken through the panel to an agreement in force."""
    changes = {"items": ITEMS, "data_from": date(2016, 1, 1), "data_to": date(2026, 1, 1)}
    made = form(population=Population(min_age=18), team=(COLLEAGUE,), **changes)
    reference: str = act(engine, lambda s: applications.create_draft(s, LEAD, made).reference)
    act(engine, lambda s: applications.submit(s, LEAD, reference))
    act(engine, lambda s: panel.start_review(s, ADMIN, reference))
    votes(engine, reference)
    act(engine, lambda s: panel.decide(s, ADMIN, reference, "Approved."))
    act(engine, lambda s: agreements.issue(s, ADMIN, reference))
    return reference


def _cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--home", str(home)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def cycled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """A service home after a whole cycle, with three people and one other to follow."""
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # the scan reads the home's SQLite
    home = tmp_path / "home"
    home.mkdir()
    folders = nation(tmp_path / "practices", home / "keys", tmp_path / "packages", 2, 1_200, 5)
    first = folders[0].name
    aside = tmp_path / "aside"
    for copy in ("refused", "waiting"):
        shutil.copytree(tmp_path / "packages" / first, aside / copy)
    shutil.copytree(tmp_path / "packages", home / "inbox")
    collect(Central(home), sorted((home / "inbox").iterdir()))
    assert not any((home / "inbox").iterdir())

    engine = connect(url_for_home(home))
    cast(engine)
    application = _approve(engine)
    agreement = agreement_of(engine, application)
    assert agreement is not None
    (tmp_path / "study.py").write_text(textwrap.dedent(STUDY))
    document = runs.compile_file(tmp_path / "study.py")
    made = runs.submit(home, LEAD, agreement, document)
    # A run recorded before tokens were kept in files: its tokens are rows of the database.
    legacy = runs.submit(home, LEAD, agreement, document)
    (legacy.folder / uses.FILE).unlink()

    # Released: requested, checked twice, published in the register.
    said = _cli(
        home, "tre", "request", made.reference, "--file", TABLE, "--title", "By sex", "--as", LEAD
    )
    for checker in CHECKERS:
        _cli(home, "tre", "review", "approve", said.split(":")[0].strip(), TABLE, "--as", checker)
    assert list((home / "register").rglob(TABLE))

    # A dummy run, as the portal makes one: its synthetic centre is kept under the home.
    lake = dummy.ensure(home / "portal" / "dummy", 100)
    definition = from_json(document)
    DuckDBEngine(threads=1).run(definition, dummy.dummy_views(lake, nodes.columns_used(definition)))

    custodian = Custodian(home / "keys", engine)
    key = custodian.project_key(application, actor="test")
    people = _people(home, folders[0], custodian, made.folder)
    followed = []
    for lake_pseudonym in people[: ERASED + 1]:
        project = project_pseudonyms(key, pa.array([lake_pseudonym])).to_pylist()[0]
        salt = uses.basis(made.folder)
        assert salt is not None
        tokens = [
            run_use_token(key, salt, lake_pseudonym),
            use_token(key, legacy.reference, project),
        ]
        followed.append(Person(lake_pseudonym, project, tokens))
    with Session(engine) as session, session.begin():
        session.add_all(
            RunUse(run_id=_run_id(session, legacy.reference), token=p.tokens[1]) for p in followed
        )

    # A package refused (damaged in transfer): what is kept of it is its reason.
    refused = shutil.copytree(aside / "refused", home / "inbox" / f"{first}-damaged")
    events = refused / "clinical_events.parquet"
    events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])
    assert collect(Central(home), [refused]).refused
    yield Home(home, engine, followed[:ERASED], followed[ERASED], aside / "waiting")
    engine.dispose()


def _people(home: Path, practice: Path, custodian: Custodian, run: Path) -> list[str]:
    """Lake pseudonyms of the practice's patients who have records in the lake and whom the
    run read."""
    numbers = pq.read_table(practice / "patients.parquet", columns=["nhs_number"])["nhs_number"]
    sql = lake_sql(Lake.open(home / "lake").snapshot())
    found = []
    for number in numbers.to_pylist()[:40]:
        pseudonym = custodian.pseudonym_for(number, actor="test")
        held = sql.sql(
            "select count(*) from clinical_events where patient = ?", params=[pseudonym]
        ).fetchall()[0][0]
        if held:
            found.append(pseudonym)
    return found


def _run_id(session: Session, reference: str) -> int:
    from gpdpr.tre.models import Run

    return session.scalars(sa.select(Run.id).where(Run.reference == reference)).one()


def test_nothing_of_an_erased_person_survives_anywhere_under_the_home(cycled: Home) -> None:
    home = cycled.home
    everyone = [n for i, p in enumerate(cycled.erased) for n in p.needles(f"erased {i}")]
    everyone += cycled.other.needles("other")
    first = scan(home, everyone)
    before = {(h.needle.split(":")[0], h.needle.split(": ")[1]) for h in first}
    # Every form of every one of them is somewhere before: the lake, the run's file of uses,
    # the database's older uses, the refused package's summary none (it keeps counts only).
    for label in [f"erased {i}" for i in range(ERASED)] + ["other"]:
        for kind in ("lake pseudonym", "token 0, as kept", "token 1"):
            assert (label, kind) in before, (label, kind, sorted(before))

    registry = Registry(cycled.engine)
    for person in cycled.erased:
        assert registry.set(person.lake, "type1", "online")
    shutil.copytree(cycled.waiting, home / "inbox" / "waiting")  # arrives before the cycle

    said = _cli(home, "erase")
    beyond = "Beyond the lake: 6 use tokens removed from the records of whom 2 research runs read"
    assert beyond in said, said
    assert f"Waiting in {home / 'inbox'}: 1 package, not yet collected" in said, said
    _cli(home, "collect")  # what the cycle asks for: the waiting package, loaded and deleted
    assert not (home / "inbox" / "waiting").exists()

    erased = [n for i, p in enumerate(cycled.erased) for n in p.needles(f"erased {i}", kept=True)]
    found = scan(home, erased + cycled.other.needles("other"))
    assert [h for h in found if not h.needle.startswith("other")] == []
    theirs = {(h.where, h.needle.split(": ")[1]) for h in found}
    assert ("decoded", "lake pseudonym") in theirs  # still in the lake
    assert ("bytes", "token 0, as kept") in theirs  # still in the run's file of uses
    assert ("row tre_run_uses.token", "token 1") in theirs  # and in the older uses
    # The registry keeps the opt-outs, and each its receipt: nothing else of them is left.
    assert len(registry.receipts()) >= ERASED
    # The run's file still finds whom it read, and no longer the erased.
    run = next(p for p in sorted((home / runs.RUNS).iterdir()) if (p / uses.FILE).exists())
    assert uses.holds(run, cycled.other.tokens[0])
    assert not any(uses.holds(run, p.tokens[0]) for p in cycled.erased)


def test_the_scan_sees_free_space_and_pages_it_is_not_told_to_allow(tmp_path: Path) -> None:
    """A deleted row left in SQLite's free space (without secure_delete) is found, and so is
    a value in a table the needle is not allowed in."""
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    made = sqlite3.connect(home / "central.db")
    made.execute("pragma secure_delete = off")
    made.execute("create table kept (pseudonym text)")
    made.execute("create table gone (pseudonym text, padding text)")
    made.executemany("insert into gone values (?, ?)", [("a" * 64, "x" * 3000)] * 3)
    made.execute("insert into kept values (?)", ("b" * 64,))
    made.commit()
    made.execute("delete from gone")
    made.commit()
    made.close()
    needles = [
        Needle(b"a" * 64, "deleted"),
        Needle(b"b" * 64, "kept", {"kept": frozenset({"pseudonym"})}),
        Needle(b"b" * 64, "kept elsewhere"),
    ]
    found = scan(home, needles)
    assert Hit("central.db", "page of free space", "deleted") in found
    assert Hit("central.db", "row kept.pseudonym", "kept elsewhere") in found
    assert not [h for h in found if h.needle == "kept"]
