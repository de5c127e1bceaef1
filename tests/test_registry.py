"""The opt-out registry: each person's current state and history, a practice's Type 1 lists
(idempotent, order-proof, and never letting a stale practice withdrawal undo a newer opt-out),
deletion receipts, and the database under it (migrations agree with the models).

Runs on SQLite, and on PostgreSQL as well when GPDPR_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session

from databases import BACKENDS, engines, pseudonym, sqlite_engine
from gpdpr.db import DATABASE_URL_ENV, MIGRATIONS, connect, metadata, pseudonym_hash, url_for_home
from gpdpr.db.events import record
from gpdpr.db.models import Base, Event, OptOutEvent, PracticeType1
from gpdpr.errors import UserError
from gpdpr.optout.registry import Registry

JAN, FEB, MAR = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    yield from engines(request.param, tmp_path)


@pytest.fixture
def registry(engine: sa.Engine) -> Registry:
    return Registry(engine)


def events(engine: sa.Engine, kind_prefix: str = "") -> list[Event]:
    with Session(engine) as session:
        query = sa.select(Event).where(Event.kind.startswith(kind_prefix)).order_by(Event.id)
        return list(session.scalars(query))


def count(engine: sa.Engine, model: type[Base]) -> int:
    with Session(engine) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model)) or 0


# ---- the database ------------------------------------------------------------------------------


def test_the_migrations_make_exactly_the_models_schema(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata())
    assert differences == []


def test_connect_is_repeatable_and_sqlite_enforces_foreign_keys_in_wal(tmp_path: Path) -> None:
    first = sqlite_engine(tmp_path)
    first.dispose()
    engine = sqlite_engine(tmp_path)  # already at head: nothing to do, nothing lost
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
            (ScriptDirectory(str(MIGRATIONS)).get_current_head(),)
        ]
    receipt = sa.text(
        "INSERT INTO deletion_receipts (pseudonym_hash, tables, rows_removed, lake_version, "
        "erased_at, opt_out_event_id) VALUES ('x', '{}', 0, 1, '2026-01-01', 999)"
    )
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(receipt)


def test_the_database_url_comes_from_the_home_folder_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert url_for_home(tmp_path) == f"sqlite:///{tmp_path.resolve()}/central.db"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://gpdpr@db/central")
    assert url_for_home(tmp_path) == "postgresql+psycopg://gpdpr@db/central"


def test_a_database_in_a_missing_folder_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no folder .* for the central database"):
        connect(f"sqlite:///{tmp_path / 'nowhere' / 'central.db'}")


def test_the_event_record_refuses_an_nhs_number(engine: sa.Engine) -> None:
    with Session(engine) as session, pytest.raises(UserError, match="NHS number"):
        record(session, "reid.refused", "panel", {"reason": "patient 943 476 5919 asked"})
    with Session(engine) as session, pytest.raises(UserError, match="NHS number"):
        record(session, "reid.refused", "panel", {"numbers": ["9434765919"]})
    with Session(engine) as session, session.begin():  # not NHS numbers: fine
        record(session, "reid.refused", "panel", {"reason": "ref 9434765918", "n": 12})
    with Session(engine) as session, pytest.raises(ValueError, match="not one of"):
        record(session, "lake.peeked", "someone", {})
    assert pseudonym_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# ---- one person: set, withdraw, status -------------------------------------------------------


def test_set_and_withdraw_change_the_state_once_and_keep_the_history(
    registry: Registry, engine: sa.Engine
) -> None:
    p = pseudonym(1)
    assert registry.status(p)["type1"]["state"] == "never"
    assert registry.set(p, "type1", "online", at=JAN) is True
    assert registry.set(p, "type1", "proxy", at=FEB) is False  # already set: nothing recorded
    assert registry.withdraw(p, "type1", "online", at=MAR) is True
    assert registry.withdraw(p, "type1", "online") is False

    status = registry.status(p)["type1"]
    assert status["state"] == "withdrawn"
    assert status["since"] == MAR and status["source"] == "online"
    assert [(e["action"], e["effective_at"]) for e in status["history"]] == [
        ("set", JAN),
        ("withdrawn", MAR),
    ]
    assert registry.status(p)["ndoo"] == {
        "state": "never",
        "since": None,
        "source": None,
        "source_ref": None,
        "history": [],
    }
    published = events(engine, "optout.")
    assert [e.kind for e in published] == ["optout.set", "optout.withdrawn"]
    assert all(e.details["person"] == pseudonym_hash(p) for e in published)
    assert all(p not in str(e.details) and p not in e.actor for e in published)


def test_withdrawing_what_was_never_set_records_nothing(
    registry: Registry, engine: sa.Engine
) -> None:
    assert registry.withdraw(pseudonym(2), "ndoo", "online") is False
    assert registry.status(pseudonym(2))["ndoo"]["state"] == "never"
    assert count(engine, OptOutEvent) == 0 and events(engine) == []


def test_the_two_opt_outs_are_independent(registry: Registry) -> None:
    a, b = pseudonym("a"), pseudonym("b")
    registry.set(a, "ndoo", "online")
    registry.set(b, "type1", "central")
    registry.set(b, "ndoo", "proxy")
    registry.withdraw(b, "ndoo", "online")
    assert registry.active_ndoo() == {a}
    assert registry.active_type1() == {b}
    assert registry.status(a)["type1"]["state"] == "never"


def test_a_change_back_dated_before_the_latest_one_does_not_become_current(
    registry: Registry,
) -> None:
    p = pseudonym(3)
    registry.set(p, "type1", "online", at=MAR)
    assert registry.withdraw(p, "type1", "online", at=FEB) is False
    assert registry.status(p)["type1"]["state"] == "set"


def test_times_without_a_zone_are_utc_and_come_back_aware(registry: Registry) -> None:
    p = pseudonym(4)
    registry.set(p, "ndoo", "online", at=datetime(2026, 5, 1, 12, 30))
    since = registry.status(p)["ndoo"]["since"]
    assert since == datetime(2026, 5, 1, 12, 30, tzinfo=UTC) and since.tzinfo is not None


@pytest.mark.parametrize(
    ("kind", "source", "who", "message"),
    [
        (
            "type2",
            "online",
            pseudonym(5),
            "'type2' is not a valid opt-out type: use one of type1, ndoo",
        ),
        ("type1", "email", pseudonym(5), "'email' is not a valid source: use one of online, proxy"),
        ("type1", "online", "9434765919", "never an NHS number"),
        ("type1", "online", pseudonym(5).upper(), "64 lower-case hex digits"),
    ],
)
def test_bad_requests_are_refused_with_what_to_do(
    registry: Registry, kind: str, source: str, who: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        registry.set(who, kind, source)


# ---- a practice's Type 1 lists -----------------------------------------------------------------


def test_a_practice_package_records_its_dissents_and_is_idempotent(
    registry: Registry, engine: sa.Engine
) -> None:
    active = [pseudonym(i) for i in range(5)]
    withdrawn = [pseudonym(i) for i in range(5, 8)]
    assert registry.apply_practice_assertions("pkg-1", "Z10001", JAN, active, withdrawn) == (5, 0)
    assert registry.active_type1() == set(active)
    history = registry.status(active[0])["type1"]["history"]
    assert [(e["source"], e["source_ref"], e["effective_at"]) for e in history] == [
        ("practice", "Z10001", JAN)
    ]
    before = (count(engine, OptOutEvent), count(engine, Event), count(engine, PracticeType1))
    assert before == (5, 5, 8)  # first-ever withdrawals: a practice row, no event

    assert registry.apply_practice_assertions("pkg-1", "Z10001", JAN, active, withdrawn) == (0, 0)
    after = (count(engine, OptOutEvent), count(engine, Event), count(engine, PracticeType1))
    assert after == before
    published = events(engine)
    assert {e.actor for e in published} == {"practice:Z10001"}
    assert all(e.details["package_id"] == "pkg-1" for e in published)


def test_a_first_ever_withdrawal_means_nothing_until_a_dissent(registry: Registry) -> None:
    p = pseudonym(10)
    assert registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [], [p]) == (0, 0)
    assert registry.status(p)["type1"]["state"] == "never"
    assert registry.apply_practice_assertions("pkg-2", "Z10001", FEB, [p], []) == (1, 0)
    assert registry.apply_practice_assertions("pkg-3", "Z10001", MAR, [], [p]) == (0, 1)
    status = registry.status(p)["type1"]
    assert status["state"] == "withdrawn" and status["since"] == MAR
    assert [e["action"] for e in status["history"]] == ["set", "withdrawn"]


def test_packages_arriving_out_of_order_do_not_turn_back_time(registry: Registry) -> None:
    p, q = pseudonym(11), pseudonym(12)
    registry.apply_practice_assertions("pkg-jan", "Z10001", JAN, [p], [])
    registry.apply_practice_assertions("pkg-mar", "Z10001", MAR, [q], [p])
    # February's package, delayed, still says p dissents and q has no code yet: ignored for p.
    assert registry.apply_practice_assertions("pkg-feb", "Z10001", FEB, [p], []) == (0, 0)
    assert registry.status(p)["type1"]["state"] == "withdrawn"
    assert registry.active_type1() == {q}


def test_a_stale_practice_withdrawal_never_overrides_a_newer_online_opt_out(
    registry: Registry,
) -> None:
    p = pseudonym(13)
    registry.set(p, "type1", "online", at=JAN)
    # The practice's latest code for p is a withdrawal from years ago; its package is newer.
    assert registry.apply_practice_assertions("pkg-1", "Z10001", FEB, [], [p]) == (0, 0)
    assert registry.apply_practice_assertions("pkg-2", "Z10001", MAR, [], [p]) == (0, 0)
    assert registry.status(p)["type1"]["state"] == "set"
    assert p in registry.active_type1()


def test_a_practice_withdrawal_after_its_own_dissent_does_count(registry: Registry) -> None:
    p = pseudonym(14)
    registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [p], [])
    registry.apply_practice_assertions("pkg-2", "Z10001", FEB, [], [p])
    assert registry.status(p)["type1"]["state"] == "withdrawn"


def test_a_practice_withdrawal_never_undoes_the_persons_own_opt_out(registry: Registry) -> None:
    p = pseudonym(14)
    registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [p], [])
    # Already opted out by the practice, the person also opts out online: that is recorded,
    # since it is theirs and outlives the practice's.
    assert registry.set(p, "type1", "online", at=JAN + timedelta(days=1)) is True
    assert registry.apply_practice_assertions("pkg-2", "Z10001", FEB, [], [p]) == (0, 1)
    assert registry.status(p)["type1"]["state"] == "set"
    assert registry.status(p)["type1"]["source"] == "online"
    assert p in registry.active_type1()


def test_practices_are_tracked_apart(registry: Registry) -> None:
    p = pseudonym(15)  # moved practice: dissent recorded at the first, nothing yet at the second
    registry.apply_practice_assertions("pkg-a", "Z10001", JAN, [p], [])
    assert registry.apply_practice_assertions("pkg-b", "Z10002", FEB, [], [p]) == (0, 0)
    assert registry.status(p)["type1"]["state"] == "set"


def test_a_damaged_manifest_is_refused(registry: Registry) -> None:
    p = pseudonym(16)
    with pytest.raises(UserError, match="both opted out and withdrawn"):
        registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [p], [p])
    with pytest.raises(UserError, match="1 entries that are not pseudonyms"):
        registry.apply_practice_assertions("pkg-1", "Z10001", JAN, [p, "9434765919"], [])
    assert registry.status(p)["type1"]["state"] == "never"


def test_fifty_thousand_pseudonyms_in_bulk(registry: Registry, engine: sa.Engine) -> None:
    people = [pseudonym(i) for i in range(50_000)]
    active, withdrawn = people[:25_000], people[25_000:]
    assert registry.apply_practice_assertions("pkg-1", "Z10001", JAN, active, withdrawn) == (
        25_000,
        0,
    )
    assert registry.active_type1() == set(active)
    assert set(registry.awaiting_receipt()) == set(active)
    assert registry.apply_practice_assertions("pkg-1", "Z10001", JAN, active, withdrawn) == (0, 0)

    # A month later half the dissents are withdrawn and the earlier withdrawals dissent.
    flipped = active[:12_500]
    now_active = active[12_500:] + withdrawn
    assert registry.apply_practice_assertions("pkg-2", "Z10001", FEB, now_active, flipped) == (
        25_000,
        12_500,
    )
    assert registry.active_type1() == set(now_active)
    assert count(engine, OptOutEvent) == 62_500 and count(engine, PracticeType1) == 50_000
    assert registry.status(flipped[0])["type1"]["since"] == FEB


# ---- deletion receipts -------------------------------------------------------------------------


def test_receipts_answer_each_opt_out_and_name_no_one(
    registry: Registry, engine: sa.Engine
) -> None:
    p, q = pseudonym(20), pseudonym(21)
    registry.set(p, "type1", "online", at=JAN)
    registry.set(q, "ndoo", "online", at=JAN)  # held, not erased: no receipt due
    waiting = registry.awaiting_receipt()
    assert list(waiting) == [p]

    receipt = registry.record_receipt(p, {"patients": 1, "clinical_events": 40}, 7, waiting[p])
    assert receipt.pseudonym_hash == pseudonym_hash(p) and receipt.rows_removed == 41
    assert registry.awaiting_receipt() == {}
    [published] = registry.receipts()
    assert published["pseudonym_hash"] == pseudonym_hash(p)
    assert published["tables"] == {"clinical_events": 40, "patients": 1}
    assert (published["rows_removed"], published["lake_version"]) == (41, 7)
    [erasure] = events(engine, "erasure")
    assert erasure.details["pseudonym_hash"] == pseudonym_hash(p)
    assert p not in str(published) and p not in str(erasure.details)

    # Opted back in, then out again: a new opt-out, so a new erasure is due.
    registry.withdraw(p, "type1", "online", at=FEB)
    assert registry.awaiting_receipt() == {}
    registry.set(p, "type1", "online", at=MAR)
    assert set(registry.awaiting_receipt()) == {p}
    assert registry.awaiting_receipt()[p] != waiting[p]


def test_a_receipt_must_answer_that_persons_type1_opt_out(registry: Registry) -> None:
    p, q = pseudonym(22), pseudonym(23)
    registry.set(p, "type1", "online")
    registry.set(q, "ndoo", "online")
    with pytest.raises(UserError, match="not this person's Type 1 opt-out"):
        registry.record_receipt(q, {"patients": 1}, 1, registry.awaiting_receipt()[p])
    with pytest.raises(UserError, match="not this person's Type 1 opt-out"):
        registry.record_receipt(p, {"patients": 1}, 1, 999_999)
    with pytest.raises(UserError, match="whole numbers"):
        registry.record_receipt(p, {"patients": -1}, 1, registry.awaiting_receipt()[p])


def test_the_registry_runs_on_postgres_when_a_server_is_given() -> None:
    """Documents the switch: with GPDPR_TEST_POSTGRES_URL set every test above runs twice."""
    assert ("postgresql" in BACKENDS) == bool(os.environ.get("GPDPR_TEST_POSTGRES_URL"))
