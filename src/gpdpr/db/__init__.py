"""The central SQL database: the event record, the opt-out registry, deletion receipts and
re-identification requests (everything central that is not the pseudonymised lake).

SQLite, embedded, by default, in the service's home folder; PostgreSQL in deployment, chosen with
`GPDPR_DATABASE_URL`. `connect` brings the schema up to date with the migrations that ship inside
the package, so a database is never opened at an older shape than the code expects.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from gpdpr.errors import UserError

DATABASE_URL_ENV = "GPDPR_DATABASE_URL"
DATABASE_FILE = "central.db"
WRITER_OPTION = "gpdpr_writer"
MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_SECONDS = 60.0

__all__ = [
    "DATABASE_URL_ENV",
    "connect",
    "metadata",
    "pseudonym_hash",
    "settle",
    "url_for_home",
]


def metadata() -> sa.MetaData:
    """Every table of the central database, whichever room's models define it: what the
    migrations must produce."""
    import gpdpr.governance.models  # registers the governance tables
    import gpdpr.portal.models  # the portal's credentials
    import gpdpr.transparency.models  # the patient's view of runs
    import gpdpr.tre.models  # noqa: F401  (and the research environment's)
    from gpdpr.db.models import Base

    return Base.metadata


def url_for_home(home: Path) -> str:
    """The database for a service home folder: `GPDPR_DATABASE_URL` when it is set, else an
    SQLite file `central.db` in the folder."""
    configured = os.environ.get(DATABASE_URL_ENV, "").strip()
    if configured:
        return configured
    return f"sqlite:///{home.resolve() / DATABASE_FILE}"


def pseudonym_hash(pseudonym: str) -> str:
    """How the event record refers to a person: SHA-256 of their pseudonym, never the pseudonym
    itself, so publishing the record publishes no key to the lake."""
    return hashlib.sha256(pseudonym.encode()).hexdigest()


def connect(url: str) -> sa.Engine:
    """An engine for the central database, its schema upgraded to the latest migration."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(
            f"{url!r} is not a database URL (like sqlite:///path/central.db or "
            "postgresql+psycopg://user@host/db); check GPDPR_DATABASE_URL"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_folder(parsed.database)
    sqlite = parsed.get_backend_name() == "sqlite"
    # A second writer (another command, another portal worker) waits its turn for this long
    # rather than failing at once with "database is locked".
    connect_args = {"timeout": BUSY_SECONDS} if sqlite else {}
    engine = sa.create_engine(parsed, json_serializer=_json, connect_args=connect_args)
    if sqlite:
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
    try:
        upgrade(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise UserError(f"cannot open the central database: {exc.orig}") from None
    return engine


def upgrade(engine: sa.Engine) -> None:
    """Run every migration not yet applied, in one transaction (all or nothing)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        if MigrationContext.configure(connection).get_current_revision() == head:
            return  # the usual case: no need to wait for the write lock
    with engine.execution_options(**{WRITER_OPTION: True}).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def settle(engine: sa.Engine) -> bool:
    """Copy SQLite's write-ahead log into the database and empty it, so that the pages as they
    were before a deletion (which the log keeps until then) are gone from disk; whether it
    could (not while another process holds a read open past the busy timeout). PostgreSQL
    keeps deleted rows until it vacuums them: nothing is done here for it."""
    if engine.dialect.name != "sqlite":
        return True
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        cursor.close()
    finally:
        raw.close()
    return not busy


def _json(value: Any) -> str:
    """JSON columns written with orjson: bulk writes of events spend much of their time here."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _check_sqlite_folder(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = Path(database).parent
    if not folder.is_dir():
        raise UserError(
            f"no folder {folder} for the central database: create it, or pass another --home "
            f"(or set {DATABASE_URL_ENV})"
        )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Foreign keys enforced, write-ahead logging (readers never block the writer), deleted
    rows overwritten with zeros where they were (an erased person's index rows must not
    survive in the file's free space; not every SQLite build does it by default), and
    transactions begun by SQLAlchemy rather than the sqlite3 driver (see `_sqlite_begin`)."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    """A real BEGIN for every transaction, reads and DDL included: the sqlite3 driver's own
    handling skips it for both, which would make migrations non-transactional and let two
    read-then-write changes interleave. A writing transaction (see `gpdpr.db.transactions`)
    begins IMMEDIATE: it takes the write lock first, waiting for it, because a transaction that
    read first and then finds another writer has committed meanwhile fails at once, whatever the
    busy timeout."""
    if connection.get_execution_options().get(WRITER_OPTION):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")
