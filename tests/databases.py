"""The central database for tests: SQLite in the test's own folder always, and PostgreSQL too
when GPDPR_TEST_POSTGRES_URL names a server (each test then gets a schema of its own, dropped
afterwards, so parallel workers never meet)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from gpdpr.db import connect

POSTGRES_ENV = "GPDPR_TEST_POSTGRES_URL"
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get(POSTGRES_ENV) else [])


def pseudonym(n: int | str) -> str:
    """A stand-in lake pseudonym (64 hex digits)."""
    return hashlib.sha256(f"person {n}".encode()).hexdigest()


def sqlite_engine(folder: Path) -> sa.Engine:
    return connect(f"sqlite:///{folder / 'central.db'}")


@contextmanager
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty schema on the test server, dropped afterwards."""
    base = os.environ[POSTGRES_ENV]
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def postgres_engine() -> Iterator[sa.Engine]:
    with postgres_url() as url:
        engine = connect(url)
        try:
            yield engine
        finally:
            engine.dispose()


def engines(backend: str, folder: Path) -> Iterator[sa.Engine]:
    """For a fixture parametrized over BACKENDS: one engine, cleaned up afterwards."""
    if backend == "sqlite":
        made = sqlite_engine(folder)
        yield made
        made.dispose()
    else:
        yield from postgres_engine()
