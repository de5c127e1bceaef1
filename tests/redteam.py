"""The red team's world (issue 17): a real service home under attack, the secrets planted in and
around it, the person the attacks are after, and the tools to look for any of it getting out.

    world = the_world(tmp_path_factory)        # built once per test process
    before = world.state()
    ... attack ...
    assert world.leaks(error_text, since=before) == []  # each canary, byte by byte, anywhere
    assert world.new_files(before) == []                # nothing outside a run's own folder

The home is the portal tests' (tests/portal_home.py: two synthetic practices collected into a
lake, the governance cast of governing.py with passwords), plus:
  - `agreement`: LEAD's project (COLLEAGUE on its team, funded by CHARITY), granting patients'
    sex, month of birth and deprivation decile, registration dates and clinical events' codes
    and dates: no medicines, no practice;
  - `second`: a second project of LEAD's with the same grant (one researcher, two agreements);
  - `colleague`: COLLEAGUE's own project (same organisation as LEAD, LEAD not on its team);
  - an output checker from the project's funder (`FUNDER_CHECKER`).

Canaries: the pseudonym and project keys and the practices' signing keys (HOME/keys), a secret
in a file in HOME and one in a folder under /tmp, a secret in an environment variable (set when
this module is imported, so before any Spark JVM starts, for `${env:...}`), and the target's
facts: their
pseudonyms in the lake and in each project, and the exact date of their first diagnosis with
`target.code`.

The target is a real adult in the lake picked out by what an attacker typically knows: month of
birth, sex and deprivation decile, together unique in the project's view. They have `code`
(first recorded on a date no one else's first `code` is on) and not `absent_code`.
"""

from __future__ import annotations

import atexit
import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import gpdpr
from governing import ADMIN, CHARITY, CHECKERS, COLLEAGUE, LEAD, act, agreement_of, form, votes
from gpdpr.cli import app
from gpdpr.errors import UserError
from gpdpr.governance import agreements, applications, panel, people
from gpdpr.governance.form import Item, Population
from gpdpr.lake.store import Lake
from gpdpr.tre import runs
from gpdpr.tre.engines.base import Engine
from gpdpr.tre.query import serial
from gpdpr.tre.query.language import (
    Dataset,
    Measures,
    case,
    clinical_events,
    definition_of,
    months,
    patients,
    when,
)
from tre_data import engine as test_engine

ENV_CANARY = "GPDPR_REDTEAM_SECRET"
os.environ[ENV_CANARY] = f"rtcanary-env-{secrets.token_hex(16)}"

FUNDER_CHECKER = "k.funder"  # an output checker from CHARITY, the projects' funder
ITEMS = (
    Item("patients", "patient", "to count people once"),
    Item("patients", "sex", "outcomes differ by sex"),
    Item("patients", "birth_year", "age"),
    Item("patients", "birth_month", "age"),
    Item("patients", "imd_decile", "deprivation"),
    Item("registrations", "patient", "who is registered"),
    Item("registrations", "start_date", "registered when"),
    Item("registrations", "end_date", "registered when"),
    Item("clinical_events", "patient", "diagnoses"),
    Item("clinical_events", "code", "diagnoses"),
    Item("clinical_events", "effective_date", "when"),
)
# What a run's views read to find the target (all granted by ITEMS).
USED = {
    "patients": {"sex", "date_of_birth", "imd_decile"},
    "clinical_events": {"code", "effective_date"},
}
# Where in HOME a run may leave files: its own folder, the database, the public transparency
# log, the log's kept tree (hashes of the log's own entries) and the register's own pages (the
# command line publishes both after every change), and (for the portal) the uploaded
# definitions and the dummy data made for them. Never a release's
# folder: only a release writes there.
ALLOWED_NEW = (
    re.compile(r"^tre/runs/RUN-[^/]+(/|$)"),
    re.compile(r"^central\.db"),
    re.compile(r"^log/"),
    re.compile(r"^\.log-tree/[^/]+$"),
    re.compile(r"^register/[^/]+$"),
    re.compile(r"^portal/definitions/"),
    re.compile(r"^portal/dummy/"),
)
# Folders of HOME that hold what the canaries are made from, or the data itself: not scanned
# for canaries (a new file in them is still caught, as a file no run may write).
NOT_SCANNED = ("keys", "lake", "packages", "practices", "rejected", "idp")
# SQLite databases are scanned through SQL, never by reading their files: closing a file SQLite
# has open drops the locks its connections in this process hold, and another process writing
# then corrupts the database.
DATABASE_FILE = re.compile(r"\.db(-wal|-shm|-journal)?$")
# What the environment keeps of each published number for the differencing check: raw counts
# and what they count, by design inside and never shown to anyone, so not scanned.
INTERNAL_FILE = "cells.json"
ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class Target:
    """The person the attacks are after, and what background knowledge says about them."""

    date_of_birth: date  # the first of the month, as the views show it
    sex: str
    imd_decile: int
    code: str  # a diagnosis they have, with at least 20 others
    first_date: date  # the day `code` was first recorded for them: no one else's is then
    absent_code: str  # a diagnosis they do not have, with at least 20 others
    lake_pseudonym: str
    project_pseudonyms: tuple[str, ...]  # theirs in each project's view

    def condition(self) -> str:
        """Python (for a definition file) picking out the target by background knowledge."""
        return (
            f'((patients.date_of_birth == "{self.date_of_birth.isoformat()}") '
            f'& (patients.sex == "{self.sex}") & (patients.imd_decile == {self.imd_decile}))'
        )


@dataclass
class World:
    home: Path
    db: sa.Engine
    agreement: str
    second: str
    colleague: str
    version: int
    target: Target
    secrets_folder: Path  # under /tmp: the file canary, and where attacks try to write
    canaries: dict[str, bytes] = field(default_factory=dict)  # what -> bytes never to get out
    population: pa.Table | None = None  # the project's patients (with `has_code`)
    firsts: dict[str, date] = field(default_factory=dict)  # patient -> first `target.code`
    published: Path | None = None  # a release's folder on the register, served to anyone

    # ---- files and canaries -----------------------------------------------------------

    def state(self) -> State:
        """HOME's files with their size and time, which canaries the database already holds,
        and the half-made runs: what an attack is then judged against."""
        files = {}
        for path in self.home.rglob("*"):
            if path.is_file():
                stat = path.stat()
                files[path.relative_to(self.home).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return State(files, set(self._in_database()), set(self._pending()))

    def new_files(self, before: State) -> list[str]:
        """Files in HOME since `before` that no run or upload may write."""
        return sorted(
            p
            for p in set(self.state().files) - set(before.files)
            if not any(rule.match(p) for rule in ALLOWED_NEW)
        )

    def pending(self, since: State | None = None) -> list[str]:
        """Folders a run left half-made (since `since`)."""
        return sorted(set(self._pending()) - (since.pending if since else set()))

    def _pending(self) -> list[str]:
        folder = self.home / runs.RUNS
        return [p.name for p in folder.glob(".pending*")] if folder.exists() else []

    def leaks(self, *texts: str | bytes | None, since: State | None = None) -> list[str]:
        """Every canary, byte by byte, found in the texts given (errors, command output,
        pages), in a file of HOME (written since `since`, or any) other than those it was made
        from, or in a value in the central database (new since `since`): as 'what in where'."""
        found = []
        for index, text in enumerate(texts):
            if text:
                body = text.encode() if isinstance(text, str) else text
                found += [f"{what} in text {index}" for what in self._in(body)]
        now = self.state()
        for relative, stamp in sorted(now.files.items()):
            if _under(relative, NOT_SCANNED) or relative == CANARY_FILE:
                continue
            if DATABASE_FILE.search(relative):
                continue
            if relative.startswith(f"{runs.RUNS}/") and relative.endswith(f"/{INTERNAL_FILE}"):
                continue
            if since is not None and since.files.get(relative) == stamp:
                continue
            body = (self.home / relative).read_bytes()
            found += [f"{what} in {relative}" for what in self._in(body)]
        found += sorted(now.database - (since.database if since else set()))
        return found

    def harm(self, outcome: Outcome, before: State, targets: Iterable[Path] = ()) -> list[str]:
        """Everything that went wrong in an attempt, in words: files the attack wrote where it
        aimed, files no run may write, half-made runs, canaries anywhere, and a crash (a crash is
        no clear refusal). Empty when the attack was refused or harmless."""
        problems = [f"written: {p}" for p in targets if p.exists()]
        problems += [f"new file in HOME: {p}" for p in self.new_files(before)]
        problems += [f"half-made run: {p}" for p in self.pending(before)]
        problems += [f"leaked: {p}" for p in self.leaks(outcome.text, since=before)]
        if not outcome.clear:
            problems.append(f"crashed (exit {outcome.code}): {outcome.text[-3000:]}")
        return problems

    def _in(self, body: bytes) -> list[str]:
        return [what for what, canary in self.canaries.items() if canary in body]

    def _in_database(self) -> Iterable[str]:
        for table, values in database_values(self.db):
            yield from (f"{what} in the table {table}" for what in self._in(values))


def assert_harmless(
    world: World, outcome: Outcome, before: State, targets: Iterable[Path] = ()
) -> None:
    """The attempt was refused with a clear error or ran harmlessly (see World.harm)."""
    problems = world.harm(outcome, before, targets)
    assert not problems, "\n".join(problems)


@dataclass(frozen=True)
class State:
    files: dict[str, tuple[int, int]]  # relative path -> (size, modification time)
    database: set[str]  # 'canary in the table ...'
    pending: set[str]  # half-made runs' folders


CANARY_FILE = "redteam-canary.txt"


def _under(relative: str, folders: Sequence[str]) -> bool:
    return any(relative == f or relative.startswith(f"{f}/") for f in folders)


# The differencing guard's own tables and columns: what each published number counts, with its
# raw count, by design inside the environment only and never shown; not scanned.
INTERNAL_TABLES = ("cell", "differenc")


def database_values(db: sa.Engine) -> Iterable[tuple[str, bytes]]:
    """Every value of every table of the central database (but the guard's), as bytes, a table
    at a time."""
    from gpdpr.db import metadata

    with db.connect() as connection:
        for name, table in metadata().tables.items():
            if any(word in name for word in INTERNAL_TABLES):
                continue
            kept = [c for c in table.columns if c.name != "cells"]
            chunks = []
            for row in connection.execute(sa.select(*kept)):
                for value in row:
                    if isinstance(value, bytes):
                        chunks.append(value)
                    elif isinstance(value, str):
                        chunks.append(value.encode())
                    elif value is not None:
                        chunks.append(orjson.dumps(value, default=str))
            yield name, b"\x00".join(chunks)


# ---- building the world ----------------------------------------------------------------------

_world: World | None = None


def the_world(factory: pytest.TempPathFactory) -> World:
    """The world, built on first use in this process and kept (building a home is slow)."""
    global _world
    if _world is None:
        _world = _build(factory.mktemp("redteam"))
    return _world


def _approve(db: sa.Engine, lead: str, **changes: Any) -> str:
    reference = act(db, lambda s: applications.create_draft(s, lead, form(**changes)).reference)
    act(db, lambda s: applications.submit(s, lead, reference))
    act(db, lambda s: panel.start_review(s, ADMIN, reference))
    votes(db, reference)
    act(db, lambda s: panel.decide(s, ADMIN, reference, "Approved."))
    act(db, lambda s: agreements.issue(s, ADMIN, reference))
    found = agreement_of(db, reference)
    assert found is not None
    return found


def _build(folder: Path) -> World:
    from portal_home import build

    built = build(folder)
    home, db = built.home, built.engine
    act(
        db,
        lambda s: people.add_person(
            s,
            ADMIN,
            FUNDER_CHECKER,
            "K Funder",
            "k.funder@example.org",
            CHARITY,
            ["output_checker"],
        ),
    )
    common: dict[str, Any] = {"items": ITEMS, "population": Population(min_age=18)}
    first = _approve(db, LEAD, team=(COLLEAGUE,), **common)
    second = _approve(db, LEAD, title="Deprivation and diabetes, again", team=(), **common)
    colleague = _approve(db, COLLEAGUE, title="A colleague's study", team=(), **common)
    version = Lake.open(home / "lake").latest().number

    secrets_folder = Path(tempfile.mkdtemp(prefix="gpdpr-redteam-"))
    atexit.register(shutil.rmtree, secrets_folder, True)
    canaries = _plant(home, secrets_folder)
    projects = ((first, LEAD), (second, LEAD), (colleague, COLLEAGUE))
    target, population, firsts = _find_target(home, db, version, projects)
    world = World(
        home,
        db,
        first,
        second,
        colleague,
        version,
        target,
        secrets_folder,
        canaries,
        population,
        firsts,
    )
    world.canaries |= {
        "the target's lake pseudonym": target.lake_pseudonym.encode(),
        "the target's first diagnosis date": target.first_date.isoformat().encode(),
    } | {
        f"the target's pseudonym in project {i}": p.encode()
        for i, p in enumerate(target.project_pseudonyms)
    }
    world.published = _publish_something(world, built.agreement)
    found = world.leaks()
    assert found == [], f"a canary is in the world before any attack: {found}"
    assert world.pending() == []
    return world


def _publish_something(world: World, agreement: str) -> Path:
    """A release on the register, as any working service has, by the portal tests' study."""
    from portal_home import STUDY

    document = compile_study(world.secrets_folder / "study", STUDY.split("\n", 2)[2])
    made = runs.submit(world.home, LEAD, agreement, document)
    done = release(world, made.reference, list(made.outputs))
    assert done.published, done.text
    folders = {p.parent for p in (world.home / "register" / "releases").glob("*/*")}
    assert len(folders) == 1, folders
    return folders.pop()


def _plant(home: Path, secrets_folder: Path) -> dict[str, bytes]:
    canaries: dict[str, bytes] = {}
    for name in ("pseudonym", "project"):
        document = orjson.loads((home / "keys" / f"{name}.key").read_bytes())
        raw = base64.b64decode(document["key"])
        canaries[f"the {name} key"] = document["key"].encode()
        canaries[f"the {name} key's bytes"] = raw
        canaries[f"the {name} key in hex"] = raw.hex().encode()
    for path in sorted((home / "keys" / "practices").glob("*/signing.key")):
        body = path.read_text().splitlines()[1]  # the PEM's base64 line
        canaries[f"the signing key of {path.parent.name}"] = body.encode()
    home_secret = f"rtcanary-home-{secrets.token_hex(16)}"
    (home / CANARY_FILE).write_text(home_secret + "\n")
    canaries["the secret in HOME"] = home_secret.encode()
    tmp_secret = f"rtcanary-tmp-{secrets.token_hex(16)}"
    (secrets_folder / "secret.txt").write_text(tmp_secret + "\n")
    canaries["the secret in /tmp"] = tmp_secret.encode()
    canaries["the secret in the environment"] = os.environ[ENV_CANARY].encode()
    return canaries


def _find_target(
    home: Path, db: sa.Engine, version: int, projects: Sequence[tuple[str, str]]
) -> tuple[Target, pa.Table, dict[str, date]]:
    """An adult unique by month of birth, sex and decile in every project's view, of whom the
    central database holds nothing (no opt-out), with a diagnosis first recorded on a day that
    is no one else's first day for it (and not the first or last of a month, which intervals
    print), and a diagnosis they do not have."""
    views = [_views(home, db, version, *project) for project in projects]
    first = views[0]
    patients = first["patients"].to_pylist()
    events = first["clinical_events"].to_pylist()
    background = Counter(_known(p) for p in patients)
    firsts: dict[tuple[str, str], date] = {}
    for e in events:
        if e["code"] is None or e["effective_date"] is None:
            continue
        key = (e["patient_id"], e["code"])
        if key not in firsts or e["effective_date"] < firsts[key]:
            firsts[key] = e["effective_date"]
    with_code: dict[str, set[str]] = {}
    days: dict[str, Counter[date]] = {}
    for (patient, code), day in firsts.items():
        with_code.setdefault(code, set()).add(patient)
        days.setdefault(code, Counter())[day] += 1
    common = sorted(c for c, who in with_code.items() if 20 <= len(who) <= len(patients) // 3)
    in_lake = _lake_pseudonyms(home, version)
    recorded = b"".join(values for _, values in database_values(db))
    # In order of what is known of them, not of their pseudonyms (which change with the keys
    # made for each home): the same person every time.
    for person in sorted(patients, key=lambda p: repr(_known(p))):
        known = _known(person)
        lake_id = in_lake.get(known, "")
        if None in known or background[known] != 1 or not lake_id or lake_id.encode() in recorded:
            continue
        for code in common:
            found = firsts.get((person["patient_id"], code))
            if found is None or days[code][found] != 1 or found.day == 1:
                continue
            day = found
            if (day + timedelta(1)).day == 1:
                continue
            absent = next(c for c in common if person["patient_id"] not in with_code[c])
            others = [_pseudonym_of(v, known) for v in views]
            if None in others:
                continue
            born, sex, decile = known
            target = Target(
                born, sex, decile, code, day, absent, lake_id, tuple(str(p) for p in others)
            )
            has = pa.array([p["patient_id"] in with_code[code] for p in patients])
            dates = {p: d for (p, c), d in firsts.items() if c == code}
            return target, first["patients"].append_column("has_code", has), dates
    raise AssertionError("no one in the test lake can be the target: change the seed")


def _known(person: Mapping[str, Any]) -> tuple[Any, ...]:
    return (person["date_of_birth"], person["sex"], person["imd_decile"])


def _views(
    home: Path, db: sa.Engine, version: int, reference: str, handle: str
) -> dict[str, pa.Table]:
    from gpdpr.tre import views

    with Session(db) as session:
        scope = agreements.authorise(session, handle, reference, views.required_fields(USED))
    return runs.project_views(home, db, scope, handle, USED, version)


def _pseudonym_of(views: Mapping[str, pa.Table], known: tuple[Any, ...]) -> str | None:
    found = [
        p["patient_id"]
        for p in views["patients"].to_pylist()
        if (p["date_of_birth"], p["sex"], p["imd_decile"]) == known
    ]
    return found[0] if len(found) == 1 else None


def _lake_pseudonyms(home: Path, version: int) -> dict[tuple[Any, ...], str]:
    """Each person's pseudonym in the lake, by month of birth, sex and decile (as the views
    show them), for those these make unique."""
    table = Lake.open(home / "lake").snapshot(version).read("patients")
    found: dict[tuple[Any, ...], list[str]] = {}
    for r in table.to_pylist():
        born = date(r["birth_year"], r["birth_month"], 1) if r["birth_year"] else None
        found.setdefault((born, r["sex"], r["imd_decile"]), []).append(str(r["patient"]))
    return {known: ids[0] if len(ids) == 1 else "" for known, ids in found.items()}


# ---- definitions -----------------------------------------------------------------------------


def compile_study(folder: Path, body: str, name: str = "study.py") -> bytes:
    """The JSON of a definition written in the language (`from gpdpr.tre.language import *` is
    added), as a researcher's `gpdpr tre compile` makes it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("from gpdpr.tre.language import *\n" + textwrap.dedent(body))
    return runs.compile_file(path)


def edited(document: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """A definition's JSON changed by hand, as an attacker would, without the language."""
    data = orjson.loads(document)
    change(data)
    return orjson.dumps(data)


def base_dataset() -> bytes:
    """Women, by sex: the simplest definition whose SQL has no joins (so an injected statement
    can end it and another begin)."""
    dataset = Dataset()
    dataset.define_population(patients.sex == "F")
    dataset.sex = patients.sex
    dataset.add_table("by_sex", by=["sex"])
    return serial.to_json(definition_of(dataset, None))


def base_measure() -> bytes:
    """Adults' records of anything, by sex, over one month."""
    measures = Measures()
    measures.define_measure(
        "events",
        numerator=clinical_events.exists_for_patient(),
        denominator=patients.exists_for_patient(),
        group_by={"sex": patients.sex},
        intervals=months(1).starting_on("2024-01-01"),
    )
    return serial.to_json(definition_of(None, measures))


def prelude(target: Target, code: str | None = None) -> str:
    """What every attack on the target starts with, in the language: `is_target` (the
    background knowledge), `has` (a record of `code`, by default the one the target has) and
    `first_date` (the day it was first recorded)."""
    code = code or target.code
    return f"""
is_target = {target.condition()}
coded = clinical_events.where(clinical_events.code.is_in(["{code}"]))
has = coded.exists_for_patient()
first_date = coded.sort_by(coded.effective_date).first_for_patient().effective_date
"""


def study(world: World, folder: Path, body: str, code: str | None = None) -> bytes:
    """A definition written in the language after the prelude, compiled as a researcher would."""
    return compile_study(folder, prelude(world.target, code) + textwrap.dedent(body))


def node_of(document: dict[str, Any], variable: str) -> int:
    """The node a dataset variable of a definition's JSON is."""
    return next(int(node) for name, node in document["variables"] if name == variable)


def padding(
    world: World, modulus: int, residue: int, within: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[date, int]:
    """A day such that the people (among `within`) with the target's code or born before it
    number k, k % modulus == residue and k > 20: an attacker's padding, chosen so that k and
    k - 1 (the target left out) are published differently under the rule."""
    assert world.population is not None
    people = [r for r in world.population.to_pylist() if within is None or within(r)]
    for day in sorted({r["date_of_birth"] for r in people if r["date_of_birth"] is not None}):
        k = sum(
            1
            for r in people
            if r["has_code"] or (r["date_of_birth"] is not None and r["date_of_birth"] < day)
        )
        if k > 20 and k % modulus == residue:
            return day, k
    raise AssertionError("no padding gives that count: change the seed")


def csv_rows(body: bytes) -> list[dict[str, str]]:
    """A published CSV's rows, every value as it is written (empty: nothing published)."""
    import csv
    import io

    return list(csv.DictReader(io.StringIO(body.decode())))


def outputs_of(world: World, outcome: Outcome) -> dict[str, bytes]:
    """Every output file of the run a successful submission made (none if it was refused)."""
    if outcome.code != 0 or outcome.value is None:
        return {}
    folder = Path(outcome.value.folder) / runs.OUTPUTS
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def normalised(text: str) -> str:
    """A message or page with what differs between any two runs (their references, times and
    folders) taken out."""
    text = re.sub(r"RUN-\d+", "RUN-?", text)
    text = re.sub(r"REQ-\d+", "REQ-?", text)
    text = re.sub(r"/\S*/tre/runs/\S*", "<run folder>", text)
    return re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?", "<time>", text)


# ---- injections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Injection:
    """A hostile definition, and the files it writes if it works (there must be none)."""

    document: bytes
    targets: tuple[Path, ...] = ()

    def clear(self) -> None:
        """Remove what an earlier attempt wrote, so that this one is judged on its own."""
        for path in self.targets:
            path.unlink(missing_ok=True)


# Where each kind of name sits in the compiled SQL, and what ends the query there so that the
# attacker's SQL can follow: a dataset's variables are selected from the patients; a measure's
# groups from its per-group table `t` joined to the intervals.
_FROM = {"variable": "v_patients p", "group": "(select 'a' as g_0) t, intervals i"}


def injections(world: World) -> dict[str, Injection]:
    """Every injection the red team tries, by name: SQL through a variable or group name (for
    DuckDB: write files, attach a database, load an extension, or fail with a secret in the
    error; for Spark, which runs one statement: fail with a secret in the error), `${env:...}`
    in names and values, quotes and backslashes in string values, codes and codelist labels,
    and a path through a table's or a measure's name."""
    out: dict[str, Injection] = {}
    for where in ("variable", "group"):
        for attack, (text, targets) in _names(world, where).items():
            out[f"{where}-{attack}"] = Injection(_named(where, text), targets)
    assert world.published is not None
    up = "../../../../register/releases/" + world.published.name
    out["table-path"] = Injection(
        edited(base_dataset(), lambda d: d["tables"][0].update(name=f"{up}/leak-table")),
        (world.published / "leak-table.csv",),
    )
    out["measure-path"] = Injection(
        edited(base_measure(), lambda d: d["measures"][0].update(name=f"{up}/leak-measure")),
        (world.published / "leak-measure.csv",),
    )
    secret = _secrets_sql(world, "duckdb")
    out["value-quote"] = Injection(_population_is(f"F' or cast(({secret}) as int) = 1 or 'a' = '"))
    out["value-backslash"] = Injection(
        _population_is(
            f"F\\' or cast(({_secrets_sql(world, 'spark')}) as int) = 1 or \\'a\\' = \\'"
        )
    )
    out["value-env"] = Injection(_published_value("${env:" + ENV_CANARY + "}"))
    out["code-quote"] = Injection(_sex_is_in(["F", f"F') or cast(({secret}) as int) = 1 or ('a"]))
    label = f"x'); copy ({secret}) to '{world.secrets_folder}/x.csv'; --"

    def relabel(document: dict[str, Any]) -> None:
        for node in document["nodes"]:
            if node["node"] == "IsIn":
                node["codelist"] = label

    out["codelist-label"] = Injection(
        edited(_sex_is_in(["F"]), relabel), (world.secrets_folder / "x.csv",)
    )
    return out


def _names(world: World, where: str) -> dict[str, tuple[str, tuple[Path, ...]]]:
    """Hostile names for `where`, each with the files it would write."""
    frm, tmp = _FROM[where], world.secrets_folder
    assert world.published is not None
    public = world.published  # a release's folder: the portal serves what is in it to anyone
    files = _file_list(world)
    copies = (tmp / f"leak-{where}.csv", public / f"leak-{where}.csv", public / f"lake-{where}.csv")
    copy = (
        f"copy (select content from read_text([{files}])) to '{copies[0]}' (format csv); "
        f"copy (select content from read_text([{files}])) to '{copies[1]}' (format csv); "
        f"copy (select * from read_parquet('{world.home}/lake/clinical_events/**/*.parquet')) "
        f"to '{copies[2]}' (format csv)"
    )
    attached = tmp / f"attached-{where}.duckdb"
    attach = (
        f"attach '{attached}' as stolen; "
        f"create table stolen.secrets as select content from read_text([{files}])"
    )
    extension = tmp / f"evil-{where}.duckdb_extension"
    load = (
        f"copy (select content from read_text([{files}])) to '{extension}' (format csv); "
        f"load '{extension}'"
    )

    def statements(sql: str) -> str:
        return f'sex" from {frm} limit 0; {sql}; select 1 as x --'

    def failing(sql: str, quote: str) -> str:
        return f"sex{quote} from {frm} where cast(({sql}) as int) = 1 --"

    return {
        "duckdb-copy": (statements(copy), copies),
        "duckdb-attach": (statements(attach), (attached,)),
        "duckdb-load": (statements(load), (extension,)),
        "duckdb-error": (failing(_secrets_sql(world, "duckdb"), '"'), ()),
        "duckdb-lake": (failing(_lake_sql(world, "duckdb"), '"'), ()),
        "spark-error": (failing(_secrets_sql(world, "spark"), "`"), ()),
        "spark-lake": (failing(_lake_sql(world, "spark"), "`"), ()),
        "env": ("${env:" + ENV_CANARY + "}", ()),
    }


def _file_list(world: World) -> str:
    paths = [
        world.home / "keys" / "pseudonym.key",
        world.home / CANARY_FILE,
        world.secrets_folder / "secret.txt",
    ]
    return ", ".join(f"'{p}'" for p in paths)


def _secrets_sql(world: World, engine: str) -> str:
    """A query whose one value holds the key and the secrets in files."""
    if engine == "duckdb":
        return f"select string_agg(content, '|') from read_text([{_file_list(world)}])"
    paths = [
        world.home / "keys" / "pseudonym.key",
        world.home / CANARY_FILE,
        world.secrets_folder / "secret.txt",
    ]
    union = " union all ".join(f"select value from text.`{p}`" for p in paths)
    return f"select concat_ws('|', collect_list(value)) from ({union}) s"


def _lake_sql(world: World, engine: str) -> str:
    """A query whose one value holds the target's every diagnosis, read from the lake."""
    t = world.target
    who = (
        f"birth_year = {t.date_of_birth.year} and birth_month = {t.date_of_birth.month} "
        f"and sex = '{t.sex}' and imd_decile = {t.imd_decile}"
    )
    lake = world.home / "lake"
    if engine == "duckdb":
        return (
            "select string_agg(patient || ' ' || code || ' ' || cast(effective_date as varchar), "
            f"'|') from read_parquet('{lake}/clinical_events/**/*.parquet') where patient = "
            f"(select patient from read_parquet('{lake}/patients/**/*.parquet') where {who})"
        )
    return (
        "select concat_ws('|', collect_list(concat_ws(' ', patient, code, "
        f"cast(effective_date as string)))) from parquet.`{lake}/clinical_events` where "
        f"patient = (select first(patient) from parquet.`{lake}/patients` where {who})"
    )


def _named(where: str, name: str) -> bytes:
    """The base dataset with `name` for its variable, or the base measure for its group."""
    if where == "variable":

        def rename(d: dict[str, Any]) -> None:
            d["variables"][0][0] = name
            d["tables"][0]["by"] = [name]

        return edited(base_dataset(), rename)
    return edited(base_measure(), lambda d: d["measures"][0]["group_by"][0].__setitem__(0, name))


def _population_is(value: str) -> bytes:
    dataset = Dataset()
    dataset.define_population(patients.sex == value)
    dataset.sex = patients.sex
    dataset.add_table("by_sex", by=["sex"])
    return serial.to_json(definition_of(dataset, None))


def _sex_is_in(codes: list[str]) -> bytes:
    dataset = Dataset()
    dataset.define_population(patients.sex.is_in(codes))
    dataset.sex = patients.sex
    dataset.add_table("by_sex", by=["sex"])
    return serial.to_json(definition_of(dataset, None))


def _published_value(value: str) -> bytes:
    """A definition that publishes `value` as the label of a group of adults."""
    dataset = Dataset()
    dataset.define_population(patients.sex.is_not_null())
    dataset.label = case(when(patients.sex == "F").then(value), otherwise="others")
    dataset.add_table("labelled", by=["label"])
    return serial.to_json(definition_of(dataset, None))


# ---- acting --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of an attempt: its exit code (0 done, 2 refused with a clear message, other:
    crashed) and every text it showed (output, error, traceback)."""

    code: int
    text: str
    value: Any = None

    @property
    def refused(self) -> bool:
        return self.code == 2

    @property
    def clear(self) -> bool:
        """Done, or refused with a clear error: not a crash."""
        return self.code in (0, 2)


def submit(
    world: World, document: bytes, engine: str, handle: str = LEAD, agreement: str | None = None
) -> Outcome:
    """Submit through the library, as the portal does: done (value: the RunRecord), refused
    (a UserError) or crashed (anything else: a crash is never a clear refusal)."""
    try:
        made = runs.submit(
            world.home, handle, agreement or world.agreement, document, engine_named(engine)
        )
    except UserError as error:
        return Outcome(2, str(error))
    except Exception as error:
        return Outcome(1, "".join(traceback.format_exception(error)))
    return Outcome(0, "", made)


def engine_named(name: str) -> Engine:
    """The process's engine: Spark skips the test when it cannot run (unless required)."""
    return test_engine(name)


def cli(world: World, *args: str) -> Outcome:
    """`gpdpr ...` in this process, with --home; the text holds its output and, if it crashed,
    the exception and its traceback (what a terminal would show)."""
    result = CliRunner().invoke(app, [*args, "--home", str(world.home)])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
        return Outcome(1 if result.exit_code in (0, 2) else result.exit_code, text)
    return Outcome(result.exit_code, text)


def cli_plain(*args: str) -> Outcome:
    """`gpdpr ...` in this process, without --home (for `gpdpr tre run --dummy`)."""
    result = CliRunner().invoke(app, list(args))
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return Outcome(1, text + "".join(traceback.format_exception(result.exception)))
    return Outcome(result.exit_code, text)


def cli_submit(
    world: World,
    document: bytes,
    engine: str,
    folder: Path,
    handle: str = LEAD,
    agreement: str | None = None,
) -> Outcome:
    engine_named(engine)  # skip now if Spark cannot run, rather than fail in the command
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"definition-{secrets.token_hex(4)}.json"
    path.write_bytes(document)
    return cli(
        world,
        "tre",
        "submit",
        str(path),
        "--agreement",
        agreement or world.agreement,
        "--as",
        handle,
        "--engine",
        engine,
    )


def run_reference(outcome: Outcome) -> str:
    """The run a successful `gpdpr tre submit` made."""
    found = re.search(r"(RUN-\d+): ran on lake version", outcome.text)
    assert outcome.code == 0 and found, outcome.text
    return found.group(1)


def subprocess_gpdpr(args: Sequence[str], timeout: float = 120) -> Outcome:
    """`python -m gpdpr ...` in a child process (this checkout's gpdpr), stopped after
    `timeout` seconds: a check that does not finish by then has no bound on its cost."""
    source = str(Path(gpdpr.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpdpr", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return Outcome(-1, f"still running after {timeout:.0f} s: stopped")
    return Outcome(done.returncode, done.stdout + done.stderr)


# ---- releasing -------------------------------------------------------------------------------


@dataclass
class Release:
    """How asking for files and two checkers' approvals ended: `published` maps each file that
    reached the register to its bytes there."""

    outcomes: list[Outcome]
    published: dict[str, bytes]

    @property
    def text(self) -> str:
        return "\n".join(o.text for o in self.outcomes)

    @property
    def refused(self) -> bool:
        return not self.published and any(o.refused for o in self.outcomes)


def release(
    world: World,
    run: str,
    files: Sequence[str],
    handle: str = LEAD,
    checkers: Sequence[str] = CHECKERS,
) -> Release:
    """Ask for `files` of `run` as `handle`, and have `checkers` approve each, as the issue's
    attacker did (the checkers approve whatever is asked), all from the command line."""
    published_before = set((world.home / "register" / "releases").glob("*/*"))
    args = ["tre", "request", run]
    for name in files:
        args += ["--file", name]
    asked = cli(world, *args, "--title", f"Release of {run}", "--as", handle)
    outcomes = [asked]
    request = re.search(r"(REQ-\d+):", asked.text)
    if asked.code == 0 and request:
        for checker in checkers:
            for name in files:
                outcomes.append(
                    cli(world, "tre", "review", "approve", request.group(1), name, "--as", checker)
                )
    published = {
        p.name: p.read_bytes()
        for p in set((world.home / "register" / "releases").glob("*/*")) - published_before
        if p.name in files
    }
    return Release(outcomes, published)


def output(world: World, run: str, name: str) -> bytes:
    path: Path = runs.run_folder(world.home, run) / runs.OUTPUTS / name
    return path.read_bytes()


def control_function() -> Callable[..., Any]:
    """The disclosure control that turns an engine's results into releasable files, wherever
    it lives now (it is moving from tre.runs to tre.release.control)."""
    try:
        from gpdpr.tre.release.control import control  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from gpdpr.tre.runs import control
    return control  # type: ignore[no-any-return,unused-ignore]
