"""Authority by registration, attacked as a rogue practice would: with only its own kit, it
re-signs another practice's package and lists someone it has never registered (or fakes their
registration) to cancel their online Type 1 opt-out or another practice's dissent. Each attempt
fails: the person stays opted out and none of their rows reaches the lake.

The rule itself (gpdpr.optout.registry.decide) is tested on its own first, then through the
registry, then end to end through `collect`."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from collecting import central, resign
from conftest import Made, one_practice
from databases import BACKENDS, engines, pseudonym
from extracting import Keys, patient_pseudonym, run
from gpdpr.collect.service import Central, collect
from gpdpr.db.models import Event
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.optout.registry import SET, WITHDRAWN, Registry, Statement, decide
from gpdpr.practice.kit import read_private_key
from gpdpr.practice.package import MANIFEST, seal
from gpdpr.practice.rules import window_for
from gpdpr.spec import shipped

JAN = datetime(2026, 1, 10, tzinfo=UTC)
FEB = datetime(2026, 2, 10, tzinfo=UTC)
MAR = datetime(2026, 3, 10, tzinfo=UTC)
ROGUE = "Y99999"


# ---- the rule on its own ---------------------------------------------------------------------


def _said(n: int, action: str, at: datetime, source: str, ref: str | None = None) -> Statement:
    return Statement(n, action, at, source, ref)


@pytest.mark.parametrize(
    ("statements", "deciding"),
    [
        ([], None),
        # The person's own withdrawal, later than a practice's dissent, wins...
        ([_said(1, SET, JAN, "practice", "A"), _said(2, WITHDRAWN, FEB, "online")], 2),
        # ...an earlier one does not, and a tie keeps the dissent.
        ([_said(2, SET, FEB, "practice", "A"), _said(1, WITHDRAWN, JAN, "online")], 2),
        ([_said(1, SET, JAN, "practice", "A"), _said(2, WITHDRAWN, JAN, "proxy")], 1),
        # A practice's withdrawal, however late, is only of its own dissent.
        ([_said(1, SET, JAN, "online"), _said(2, WITHDRAWN, MAR, "practice", "A")], 1),
        ([_said(1, SET, JAN, "practice", "A"), _said(2, WITHDRAWN, MAR, "practice", "B")], 1),
        # Of several dissents the first recorded decides; of none, the latest withdrawal.
        ([_said(5, SET, JAN, "practice", "A"), _said(3, SET, FEB, "central")], 3),
        ([_said(1, WITHDRAWN, FEB, "practice", "A"), _said(2, WITHDRAWN, JAN, "online")], 1),
    ],
)
def test_the_rule_decides_whose_word_stands(
    statements: list[Statement], deciding: int | None
) -> None:
    decided = decide(statements)
    assert (decided and decided.id) == deciding


# ---- through the registry --------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    for engine in engines(request.param, tmp_path):
        yield Registry(engine)


def test_an_online_withdrawal_later_than_the_practices_dissent_stands(
    registry: Registry,
) -> None:
    p = pseudonym("later-online")
    registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [p], [])
    assert registry.withdraw(p, "type1", "online", at=FEB) is True
    # The practice's record still says dissent, as of its later packages: nothing new, so the
    # person's later word stands.
    assert registry.apply_practice_assertions("pkg-2", "Z10001", MAR, [p], []) == (0, 0)
    assert registry.status(p)["type1"]["state"] == WITHDRAWN
    assert p not in registry.active_type1() and p in registry.restored_type1(JAN)
    # A dissent the practice records after that is heard again.
    registry.apply_practice_assertions("pkg-3", "Z10001", MAR, [], [p])
    registry.apply_practice_assertions("pkg-4", "Z10001", MAR + timedelta(days=1), [p], [])
    assert p in registry.active_type1()


def test_one_practices_withdrawal_leaves_another_practices_dissent(registry: Registry) -> None:
    p = pseudonym("two-practices")
    registry.apply_practice_assertions("pkg-a", "Z10001", JAN, [p], [])
    registry.apply_practice_assertions("pkg-b1", "Z10002", FEB, [p], [])
    assert registry.apply_practice_assertions("pkg-b2", "Z10002", MAR, [], [p]) == (0, 1)
    status = registry.status(p)["type1"]
    assert (status["state"], status["source_ref"]) == (SET, "Z10001")
    assert set(registry.awaiting_receipt()) == {p}


def test_the_person_can_withdraw_a_practice_dissent_online_but_not_the_reverse(
    registry: Registry,
) -> None:
    p = pseudonym("withdraw-online")
    registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [p], [])
    assert registry.withdraw(p, "type1", "online", at=FEB) is True, "theirs to withdraw"
    assert registry.withdraw(p, "type1", "online", at=MAR) is False, "nothing left to change"
    assert registry.status(p)["type1"]["state"] == WITHDRAWN


# ---- end to end: a rogue practice's re-signed packages ----------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return one_practice(tmp_path_factory.mktemp("small"), patients=150, seed=9)


class Extracted:
    """An honest practice's package, made once, and the rogue practice's kit."""

    def __init__(self, small: Made, tmp: Path) -> None:
        self.keys = Keys(tmp / "keys")
        practice = sorted(p for p in small.root.iterdir() if p.is_dir())[0]
        self.practice = practice
        self.package = tmp / "honest"
        self.manifest = run(practice, self.package, self.keys)
        self.rogue_key = self.keys.kit(ROGUE) / "signing.key"


@pytest.fixture(scope="module")
def extracted(small: Made, tmp_path_factory: pytest.TempPathFactory) -> Extracted:
    return Extracted(small, tmp_path_factory.mktemp("extracted"))


def _only_within_window(package: Path, taken: datetime) -> dict[str, object]:
    """Keep only the records an extract taken at `taken` would send: none of a table kept for
    the retention period dated before that period (the centre refuses a package that holds
    one; the honest package was taken earlier, so its period began earlier). The manifest's
    changed row counts, as `resign` takes them."""
    spec = shipped()
    start = window_for(spec, taken, None).retention_from
    counts: dict[str, object] = {}
    for name in sorted(spec.retention_tables):
        path = package / f"{name}.parquet"
        rows = pq.read_table(path)
        day = pc.cast(rows[spec.tables[name].date], pa.date32())
        kept = rows.filter(pc.fill_null(pc.greater_equal(day, pa.scalar(start, pa.date32())), True))
        pq.write_table(kept, path)
        counts[f"tables/{name}/rows"] = kept.num_rows
    return counts


class World:
    """A fresh centre, given the honest practice's package and the rogue's kit."""

    def __init__(self, extracted: Extracted, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.honest = extracted.package
        self.manifest = extracted.manifest
        self.rogue_key = extracted.rogue_key
        self.home: Central = central(tmp_path, extracted.keys)
        self.registry = Registry(self.home.engine())

    def collect_honest(self) -> None:
        result = collect(self.home, [self._copy(self.honest, "honest")])
        assert result.loaded and not result.refused

    def _copy(self, package: Path, name: str) -> Path:
        target = self.tmp / "inbox" / name
        shutil.copytree(package, target)
        return target

    def rogue_package(
        self, name: str, active: list[str], withdrawn: list[str], registered: list[str]
    ) -> Path:
        """The honest package's records relabelled as the rogue's, saying what the rogue likes,
        signed with the rogue's own key and dated now, to the second (the future is refused, and
        so is a date before the rogue's kit was issued, which may be this same second)."""
        folder = self._copy(self.honest, name)
        taken = datetime.now(UTC).replace(microsecond=0)
        now = taken.strftime("%Y-%m-%dT%H:%M:%SZ")
        change: dict[str, object] = _only_within_window(folder, taken)
        change |= {
            "practice/ods_code": ROGUE,
            "package_id": str(uuid.uuid4()),
            "created_at": now,
            "window/until": now,
            "type1_opt_out": {"active": active, "withdrawn": withdrawn, "registered": registered},
        }
        resign(folder, self.rogue_key, change)
        manifest = orjson.loads((folder / MANIFEST).read_bytes())
        seal(folder, manifest, read_private_key(self.rogue_key, "key"))  # the files' digests
        return folder

    def rows_of(self, person: str) -> int:
        lake = Lake.open(self.home.lake_folder)
        con = connect(lake.snapshot())
        con.register("victim", pa.table({"p": [person]}))
        held = 0
        for table in lake.data.values():
            if table.patient is not None:
                query = f"select count(*) from {table.name} where {table.patient} in "
                held += con.sql(query + "(select p from victim)").fetchall()[0][0]
        return held

    def opted_out_online(self) -> str:
        """A patient of the honest practice with records in its package, not a dissenter there,
        who opted out online an hour ago; the honest package is then loaded."""
        listed = set(self.manifest["type1_opt_out"]["active"])
        sent = pq.read_table(self.honest / "clinical_events.parquet", columns=["patient"])
        victim: str = sorted(set(sent["patient"].to_pylist()) - listed)[0]
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        assert self.registry.set(victim, "type1", "online", at=an_hour_ago)
        self.collect_honest()
        assert self.rows_of(victim) == 0
        return victim

    def ignored_counts(self, practice: str = ROGUE) -> list[dict[str, int]]:
        with self.home.engine().connect() as connection:
            details = connection.scalars(
                sa.select(Event.details).where(Event.kind == "package.loaded")
            ).all()
        return [d["type1_ignored"] for d in details if d["practice"] == practice]


@pytest.fixture
def world(extracted: Extracted, tmp_path: Path) -> World:
    return World(extracted, tmp_path)


def test_a_rogue_practice_cannot_cancel_someone_elses_online_opt_out(world: World) -> None:
    victim = world.opted_out_online()
    # The attack of the issue: a dissent then a withdrawal, each in a re-signed package that
    # carries the victim's rows, from a practice the victim was never registered with.
    for step, (active, withdrawn) in enumerate([([victim], []), ([], [victim])]):
        result = collect(world.home, [world.rogue_package(f"rogue-{step}", active, withdrawn, [])])
        assert not result.refused, "the rest of the package is good: it loads"
        assert (result.type1_set, result.type1_withdrawn) == (0, 0)
    assert world.ignored_counts() == [{"not_registered": 1}, {"not_registered": 1}]
    assert victim in world.registry.active_type1()
    status = world.registry.status(victim)["type1"]
    assert (status["state"], status["source"]) == (SET, "online")
    assert all(e["source"] == "online" for e in status["history"])
    assert world.rows_of(victim) == 0, "none of their rows reached the lake"


def test_a_fake_registration_cannot_cancel_a_later_online_opt_out(world: World) -> None:
    victim = world.opted_out_online()
    # Now the rogue lists the victim as registered with it, and its statements are later than
    # the online opt-out: its own dissent is heard, and so is its withdrawal of that dissent,
    # which is all a practice can withdraw.
    first = collect(world.home, [world.rogue_package("rogue-set", [victim], [], [victim])])
    second = collect(world.home, [world.rogue_package("rogue-undo", [], [victim], [victim])])
    assert (first.type1_set, second.type1_withdrawn) == (1, 1)
    assert world.ignored_counts() == [{}, {}]
    assert victim in world.registry.active_type1()
    assert world.registry.status(victim)["type1"]["source"] == "online"
    assert world.rows_of(victim) == 0


def test_a_fake_registration_cannot_undo_another_practices_dissent(world: World) -> None:
    world.collect_honest()
    honest = world.manifest["type1_opt_out"]
    listed = set(honest["active"]) | set(honest["withdrawn"])
    assert set(honest["registered"]) <= listed
    # Every statement the honest practice made about its registered patients was heard.
    unheard = len(listed) - len(honest["registered"])
    ods = world.manifest["practice"]["ods_code"]
    assert world.ignored_counts(ods) == [{"not_registered": unheard} if unheard else {}]
    dissenters = set(honest["active"]) & set(honest["registered"])
    assert dissenters and dissenters <= world.registry.active_type1()

    dissenter = sorted(dissenters)[0]
    undo = world.rogue_package("rogue-undo", [], [dissenter], [dissenter])
    # A first-ever withdrawal from the rogue: not even recorded, and the dissent stands.
    assert collect(world.home, [undo]).type1_withdrawn == 0
    assert dissenter in world.registry.active_type1()
    status = world.registry.status(dissenter)["type1"]
    assert (status["state"], status["source_ref"]) == (SET, ods)
    assert world.rows_of(dissenter) == 0


def _registered_on(source: Path, keys: Keys) -> dict[str, bool]:
    """Each patient's pseudonym, and whether the supplier's own files show them registered on
    the extract's day (worked out here, not by the extractor's code)."""
    day = datetime.fromisoformat(
        json.loads((source / "extract.json").read_text())["extracted_at"]
    ).date()
    patients = pq.read_table(source / "patients.parquet", columns=["patient_id", "nhs_number"])
    current = {
        r["patient_id"]
        for r in pq.read_table(source / "registrations.parquet").to_pylist()
        if r["start_date"] <= day and (r["end_date"] is None or r["end_date"] > day)
    }
    return {
        patient_pseudonym(keys, nhs): ref in current
        for ref, nhs in zip(*patients.to_pydict().values(), strict=True)
    }


def test_the_extract_says_which_of_its_listed_patients_are_registered(
    extracted: Extracted, tmp_path: Path
) -> None:
    lists = extracted.manifest["type1_opt_out"]
    registered = _registered_on(extracted.practice, extracted.keys)
    listed = set(lists["active"]) | set(lists["withdrawn"])
    assert lists["registered"] == sorted(p for p in listed if registered[p])

    # A dissenter leaves the practice: its next extract still lists them (their record stays
    # there), but no longer as registered, so the centre will not hear it.
    moved = tmp_path / "moved" / extracted.practice.name
    shutil.copytree(extracted.practice, moved)
    leaver = sorted(set(lists["active"]) & set(lists["registered"]))[0]
    ref = next(
        r
        for r, nhs in zip(
            *pq.read_table(moved / "patients.parquet", columns=["patient_id", "nhs_number"])
            .to_pydict()
            .values(),
            strict=True,
        )
        if patient_pseudonym(extracted.keys, nhs) == leaver
    )
    table = pq.read_table(moved / "registrations.parquet")
    ended = [
        date(2026, 10, 1) if who == ref else end
        for who, end in zip(
            table["patient_id"].to_pylist(), table["end_date"].to_pylist(), strict=True
        )
    ]
    column = table.schema.get_field_index("end_date")
    table = table.set_column(column, "end_date", pa.array(ended, table.schema.field(column).type))
    pq.write_table(table, moved / "registrations.parquet")
    again = run(moved, tmp_path / "again", extracted.keys)["type1_opt_out"]
    assert leaver in again["active"] and leaver not in again["registered"]
    assert again["registered"] == sorted(set(lists["registered"]) - {leaver})
