"""Every multi-step operation, cut by SIGKILL at each of its steps (and at seeded file system
steps), or by a full disk, then run again, ends exactly as a run never cut: the lake's rows, the
deletion receipts, the events recorded, the log's entries (verified, every one signed), the keys.
The harness is tests/crashes.py; the home is tiny (two practices, 300 patients) so that every
kill point costs well under a second of work."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from crashes import Operation, Postgres, Report, database_url, hammer, squeeze
from databases import BACKENDS, POSTGRES_ENV
from extracting import Keys, run
from gpdpr import db
from gpdpr.collect.service import REFUSED_NOTE, Central, collect
from gpdpr.custodian.keys import CUSTODIAN_FILE, read_pseudonym_key
from gpdpr.db import DATABASE_URL_ENV
from gpdpr.db.models import Event
from gpdpr.errors import UserError
from gpdpr.lake.query import connect, digest
from gpdpr.lake.store import Lake
from gpdpr.optout.registry import Registry
from gpdpr.practice.extract import ExtractRequest, extract
from gpdpr.practice.kit import read_kit
from gpdpr.synth.run import SynthRequest, synthesise
from gpdpr.transparency import store
from gpdpr.transparency.publish import log_folder, publish
from home_scan import stored
from readers import practice_folders

ERASED = 3  # people who opt out before the erasure is cut
PUBLISHING = "log events numbered"  # where a central command's own steps end
REPORTS: list[Report] = []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two practices' packages and the custodian's keys, in one folder."""
    work = tmp_path_factory.mktemp("tiny")
    synthesise(
        SynthRequest(
            out=work / "nation",
            practices=2,
            patients=300,
            seed=11,
            format="columnar",
            mess_rate=0.0,
        )
    )
    keys = Keys(work / "keys")
    (work / "packages").mkdir()
    for practice in practice_folders(work / "nation"):
        run(practice, work / "packages" / practice.name, keys)
    return work


def _home(tiny: Path, into: Path) -> Path:
    home = into / "home"
    shutil.copytree(tiny / "keys", home / "keys")
    shutil.copytree(tiny / "packages", home / "inbox")
    return home


def _packages(home: Path) -> list[Path]:
    return sorted(p for p in (home / "inbox").iterdir() if p.is_dir())


# ---- what is compared ------------------------------------------------------------------------


def _lake(home: Path) -> dict[str, Any]:
    """The current rows; which versions can be read, and that every file the newest of them
    name is on disk (older ones are refused in words, never read short of a file)."""
    lake = Lake.open(home / "lake")
    latest = lake.latest()
    readable = {}
    for number in range(latest.number + 1):
        try:
            snapshot = lake.snapshot(number)
        except UserError:
            assert number < latest.readable_from
            continue
        readable[number] = snapshot.version.operation
        if number >= latest.number - 2:
            missing = [
                f.path
                for name in lake.schemas
                for f in snapshot.files(name)
                if not (lake.path(name) / f.path).exists()
            ]
            assert not missing, f"lake version {number} names files no longer on disk"
    return {"readable": readable, "rows": digest(lake.snapshot())}


def _engine(home: Path) -> sa.Engine:
    """The database of a run's home: its own SQLite, or the PostgreSQL copy named beside it."""
    return db.connect(database_url(home.parent) or db.url_for_home(home))


def _events(home: Path) -> list[str]:
    """Every event recorded (time left out), and whether it is published."""
    engine = _engine(home)
    try:
        with Session(engine) as session:
            rows = session.execute(sa.select(Event.kind, Event.details, Event.log_seq)).all()
    finally:
        engine.dispose()
    return sorted(
        f"{kind} {orjson.dumps(_timeless(details), option=orjson.OPT_SORT_KEYS).decode()} "
        f"{'published' if seq is not None else 'unpublished'}"
        for kind, details, seq in rows
    )


def _timeless(details: dict[str, Any]) -> dict[str, Any]:
    """An event's details without when it was recorded (a receipt's `erased_at`) or the random
    token a refusal is recorded under (unpublished; it keeps a re-run from recording it twice)."""
    return {k: v for k, v in details.items() if k not in ("erased_at", "refusal")}


def _log(home: Path) -> list[str]:
    """The log's entries (numbering and times left out), after checking that it verifies and
    that its checkpoint signs every entry."""
    contents = store.read(log_folder(home))
    assert contents.checkpoint is not None and contents.checkpoint.size == contents.size
    assert contents.torn == 0
    entries = []
    for seq in range(contents.size):
        entry = contents.entry(seq)
        entry.pop("seq"), entry.pop("time")
        entries.append(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode())
    return sorted(entries)


def _receipts(home: Path) -> list[dict[str, Any]]:
    engine = _engine(home)
    try:
        receipts: list[dict[str, Any]] = Registry(engine).receipts()
    finally:
        engine.dispose()
    for receipt in receipts:
        receipt.pop("erased_at")
    return receipts


def _collected(home: Path) -> list[tuple[Any, ...]]:
    """The patients' collections index (gpdpr.collect.received), without its row ids."""
    from gpdpr.db.models import Collected

    engine = _engine(home)
    try:
        with engine.connect() as con:
            columns = [c for c in Collected.__table__.c if c.name != "id"]
            return sorted(tuple(r) for r in con.execute(sa.select(*columns)))
    finally:
        engine.dispose()


def _central(home: Path) -> dict[str, Any]:
    return {
        "lake versions": _lake(home),
        "events": _events(home),
        "log entries": _log(home),
        "receipts": _receipts(home),
        "collections index": _collected(home),
        "packages waiting (or half deleted)": sorted(
            p.name for p in (home / "inbox").iterdir() if p.is_dir()
        ),
        "packages refused": sorted(
            f"{p.name}: {(p / REFUSED_NOTE).read_text().strip() if p.is_dir() else ''}"
            for p in (home / "rejected").glob("*")
        ),
    }


def _refused_or_read(home: Path) -> None:
    """Every lake version a kill left is read whole, or refused in words (never a missing
    file)."""
    _lake(home)


def _before_or_after(before: dict[str, Any]) -> Any:
    """A check that a kill left the lake as it was or with the whole operation committed."""

    def check(at: Path) -> None:
        home = at / "home"
        assert (home / "lake" / "_lake").is_dir()
        lake = Lake.open(home / "lake")
        numbers = set(range(lake.latest().number + 1))
        assert set(_lake(home)["readable"]) <= numbers  # the others refused in words
        rows = digest(lake.snapshot())
        assert rows in before["ends"], "the lake is between the states before and after"

    return check


def _keys_state(folder: Path) -> dict[str, Any]:
    """Every file (owner-only), and the keys usable."""
    found = {
        str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    read_pseudonym_key(folder)
    for kit in (folder / "practices").iterdir():
        read_kit(kit)
    return {"files": found}


# ---- the operations --------------------------------------------------------------------------


def _collect_op(tiny: Path, work: Path) -> Operation:
    """`gpdpr collect` into a lake that holds one practice, of a fresh historic extract of that
    practice (every file of it rewritten: its records replaced) and a new practice's first
    (files added)."""
    template = work / "collect-template"
    home = _home(tiny, template)
    first, _ = _packages(home)
    central = Central(home)
    collect(central, [first])
    engine = central.engine()
    publish(home, engine)
    engine.dispose()
    practice = practice_folders(tiny / "nation")[0]
    assert practice.name == first.name and not first.exists()
    extract(ExtractRequest(practice, first, tiny / "keys" / "practices" / practice.name))

    def command(at: Path) -> list[str]:
        return ["collect", "--home", str(at / "home")]

    def again(at: Path) -> list[str]:
        # The operator's re-run, `gpdpr collect`, which refuses (2) when no package is left
        # but first finishes deleting any that a kill left half deleted.
        return command(at)

    ends: list[Any] = []
    op = Operation(
        "collect",
        template,
        command,
        lambda at: _central(at / "home"),
        again,
        between=_before_or_after({"ends": ends}),
        again_ok=(0, 2),
        until=PUBLISHING,
    )
    # Before: the lake as the template holds it; after: the clean run's rows.
    ends.append(digest(Lake.open(home / "lake").snapshot()))
    clean = work / "collect-reference"
    shutil.copytree(template, clean)
    collect(Central(clean / "home"), _packages(clean / "home"))
    ends.append(digest(Lake.open(clean / "home" / "lake").snapshot()))
    return op


def _refuse_op(tiny: Path, work: Path) -> Operation:
    """`gpdpr collect` of a package that is refused (a file its signed manifest does not name):
    moved aside to rejected/ with its reason, and `package.refused` recorded, then published."""
    template = work / "refuse-template"
    home = _home(tiny, template)
    keep, drop = _packages(home)
    shutil.rmtree(drop)
    (keep / "notes.txt").write_text("not in the manifest\n")
    return Operation(
        "collect, a package refused",
        template,
        lambda at: ["collect", "--home", str(at / "home")],
        lambda at: _central(at / "home"),
        ok=(1,),  # a refusal is a failure the operator must see
        # 1: the package was still waiting and is refused again; 2: none is left waiting (the
        # re-run first completed the refusal that the kill cut short).
        again_ok=(1, 2),
        until=PUBLISHING,
    )


def _publish_op(tiny: Path, work: Path) -> Operation:
    """The first `gpdpr log publish`: creates the log and its key, appends, signs."""
    template = work / "publish-template"
    home = _home(tiny, template)
    collect(Central(home), _packages(home))
    assert not log_folder(home).exists()
    return Operation(
        "log publish (first)",
        template,
        lambda at: ["log", "publish", "--home", str(at / "home")],
        lambda at: {"events": _events(at / "home"), "log entries": _log(at / "home")},
    )


def _erase_op(tiny: Path, work: Path) -> Operation:
    """`gpdpr erase` after three people opted out: rewrite, commit, vacuum, receipts, publish."""
    template = work / "erase-template"
    home = _home(tiny, template)
    central = Central(home)
    collect(central, _packages(home))
    snapshot = Lake.open(home / "lake").snapshot()
    people = [
        row[0]
        for row in connect(snapshot)
        .sql(
            "select distinct patient from clinical_events order by patient limit ?", params=[ERASED]
        )
        .fetchall()
    ]
    engine = central.engine()
    registry = Registry(engine)
    for person in people:
        assert registry.set(person, "type1", "online")
    publish(home, engine)
    engine.dispose()

    def observe(at: Path) -> dict[str, Any]:
        state = _central(at / "home")
        state["erased people found on disk"] = _found(at / "home" / "lake", people)
        return state

    return Operation(
        "erase",
        template,
        lambda at: ["erase", "--home", str(at / "home")],
        observe,
        between=lambda at: _refused_or_read(at / "home"),
        until=PUBLISHING,
    )


def _found(folder: Path, people: list[str]) -> list[str]:
    """Files under `folder` holding any of the people: as bytes, or as a value once decoded."""
    needles = [p.encode() for p in people]
    texts = pa.array(people)
    # A pseudonym is also kept as a number: its first 16 bytes (lake.tables.PERSON).
    numbers = pa.array([bytes.fromhex(p[:32]) for p in people], pa.binary())
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(n in path.read_bytes() for n in needles):
            found.append(str(path.relative_to(folder)))
        elif path.suffix == ".parquet":
            for column in map(stored, pq.read_table(path).columns):
                text = pa.types.is_string(column.type)
                if text and pc.any(pc.is_in(column, value_set=texts)).as_py():
                    found.append(str(path.relative_to(folder)))
                number = pa.types.is_binary(column.type) or pa.types.is_fixed_size_binary(
                    column.type
                )
                if number and pc.any(pc.is_in(column.cast(pa.binary()), value_set=numbers)).as_py():
                    found.append(str(path.relative_to(folder)))
    return found


def _compact_op(tiny: Path, work: Path) -> Operation:
    """`gpdpr lake compact` of a lake whose every file was split in three (as three daily loads
    would leave it): rows unchanged, files merged."""
    template = work / "compact-template"
    home = _home(tiny, template)
    central = Central(home)
    collect(central, _packages(home))
    lake = Lake.open(home / "lake")
    with lake.writing() as tx:
        for name in lake.schemas:
            for file in tx.snapshot.files(name):
                rows = tx.snapshot.read_file(name, file)
                if rows.num_rows < 3:
                    continue
                third = rows.num_rows // 3
                for start, length in ((0, third), (third, third), (2 * third, None)):
                    tx.write(name, file.practice, rows.slice(start, length))
                tx.retire(name, file)
        tx.commit("split", {})
    engine = central.engine()
    publish(home, engine)
    engine.dispose()
    rows = digest(lake.snapshot())

    def observe(at: Path) -> dict[str, Any]:
        state = _central(at / "home")
        snapshot = Lake.open(at / "home" / "lake").snapshot()
        state["live files"] = {name: len(snapshot.files(name)) for name in snapshot.lake.schemas}
        return state

    def unchanged(at: Path) -> None:
        assert digest(Lake.open(at / "home" / "lake").snapshot()) == rows
        _refused_or_read(at / "home")

    return Operation(
        "lake compact",
        template,
        lambda at: ["lake", "compact", "--home", str(at / "home"), "--max-files", "2"],
        observe,
        between=unchanged,
        until=PUBLISHING,
    )


def _init_op(work: Path) -> Operation:
    template = work / "init-template"
    template.mkdir(parents=True)

    def observe(at: Path) -> dict[str, Any]:
        state = _keys_state(at / "keys")
        about = orjson.loads((at / "keys" / CUSTODIAN_FILE).read_bytes())
        key = read_pseudonym_key(at / "keys")
        assert about["pseudonym_key"] == key.id, "custodian.json names another key"
        return state

    return Operation(
        "custodian init",
        template,
        lambda at: ["custodian", "init", "--keys", str(at / "keys")],
        observe,
        again_ok=(0, 2),  # a key made before the kill: the re-run refuses to replace it
    )


def _issue_op(tiny: Path, work: Path) -> Operation:
    template = work / "issue-template"
    shutil.copytree(tiny / "keys", template / "keys")
    return Operation(
        "custodian issue-practice",
        template,
        lambda at: ["custodian", "issue-practice", "Z10099", "--keys", str(at / "keys")],
        lambda at: _keys_state(at / "keys"),
        again_ok=(0, 2),  # a kit made before the kill: the re-run refuses to replace it
    )


# ---- the tests -------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """None on SQLite (each home its own file); on PostgreSQL, a template database that the
    operation's starting state is built in (GPDPR_DATABASE_URL names it meanwhile; `_apart`
    unsets it), copied for each run."""
    if request.param == "sqlite":
        yield None
        return
    postgres = Postgres(os.environ[POSTGRES_ENV], f"crash_template_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv(DATABASE_URL_ENV, postgres.create(postgres.template))
    try:
        yield postgres
    finally:
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        postgres.drop_database(postgres.template)


# On PostgreSQL a seeded sample of the kill points: the code cut is the same as on SQLite, and
# what differs (the database's own transactions) is met at every kind of step.
POSTGRES_NAMED = 1


def _hammered(op: Operation, work: Path, database: Postgres | None = None) -> Report:
    if database is not None:
        os.environ.pop(DATABASE_URL_ENV, None)  # from here each run names its own copy
        op.database = database
        report = hammer(op, work / "runs", sampled=1, named=POSTGRES_NAMED)
        print(f"{report.line()} (PostgreSQL)")
        assert report.kills, f"{op.name}: nothing was cut"
        return report
    report = hammer(op, work / "runs")
    print(report.line())
    assert report.steps, f"{op.name} took no named step: nothing was cut"
    small = squeeze(op, work / "small")
    print(f"{op.name} on small disks: {'; '.join(small) or 'cannot mount here (not root)'}")
    if small:
        assert "full" in small[0], f"{op.name}: the smallest disk was never full"
    return report


def test_the_first_collect_cut_anywhere_ends_as_if_never_cut(tiny: Path, tmp_path: Path) -> None:
    report = _hammered(_collect_op(tiny, tmp_path), tmp_path)
    # The cuts reached the commit, the public record, the deletion of packages and the log.
    for step in ("lake version 2 load", "package.loaded recorded", "package removed"):
        assert step in report.steps
    assert "log entries appended" in report.steps


def test_a_refusal_cut_anywhere_ends_as_if_never_cut(
    tiny: Path, tmp_path: Path, database: Postgres | None
) -> None:
    report = _hammered(_refuse_op(tiny, tmp_path), tmp_path, database)
    if database is not None:
        return
    assert {
        "refusal staged",
        "refused package staged",
        "package.refused recorded",
        "refused package moved aside",
    } <= set(report.steps)


def test_the_first_log_publish_cut_anywhere_ends_as_if_never_cut(
    tiny: Path, tmp_path: Path
) -> None:
    report = _hammered(_publish_op(tiny, tmp_path), tmp_path)
    assert {"write log.key", "log created aside", "log entries appended"} <= set(report.steps)


def test_an_erasure_cut_anywhere_ends_as_if_never_cut(
    tiny: Path, tmp_path: Path, database: Postgres | None
) -> None:
    report = _hammered(_erase_op(tiny, tmp_path), tmp_path, database)
    if database is not None:
        return
    assert {"lake vacuumed", "receipts recorded"} <= set(report.steps)
    assert any(s.endswith(" erase") for s in report.steps)


def test_compaction_cut_anywhere_ends_as_if_never_cut(tiny: Path, tmp_path: Path) -> None:
    report = _hammered(_compact_op(tiny, tmp_path), tmp_path)
    assert any(s.endswith(" compact") for s in report.steps)


def test_key_creation_cut_anywhere_leaves_no_key_or_a_whole_one(tiny: Path, tmp_path: Path) -> None:
    _hammered(_init_op(tmp_path / "init"), tmp_path / "init")
    _hammered(_issue_op(tiny, tmp_path / "issue"), tmp_path / "issue")
