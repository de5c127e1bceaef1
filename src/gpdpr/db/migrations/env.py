"""Alembic's entry point for the central database's migrations.

gpdpr runs migrations itself (`gpdpr.db.connect`) on a connection it hands over in
`config.attributes["connection"]`; there is no alembic.ini and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gpdpr.db import metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("gpdpr migrations run through gpdpr.db.connect, on a live connection")
    context.configure(
        connection=connection,
        target_metadata=metadata(),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
