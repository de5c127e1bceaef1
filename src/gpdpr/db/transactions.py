"""Transactions that change the central database when others may be changing it too: another
request of the portal, another portal worker, a command in another process.

`writing(engine)` is the engine to write through: on SQLite its transactions take the write lock
when they begin (waiting up to the busy timeout for it), on PostgreSQL they are SERIALIZABLE, so
a read-then-write change (is this opt-out already set? then record it) sees the same database it
writes to, or fails with a serialisation error. `retrying(do)` runs such a change again when the
database refused it for a conflict (serialisation failure, deadlock, a lock not granted in time),
so the caller sees either the change made exactly once or a real error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from gpdpr.db import WRITER_OPTION
from gpdpr.errors import UserError

T = TypeVar("T")
ATTEMPTS = 12
# PostgreSQL's SQLSTATEs for "try the transaction again": serialization_failure, deadlock.
_RETRY_STATES = frozenset({"40001", "40P01"})


def writing(engine: sa.Engine) -> sa.Engine:
    """`engine` for read-then-write transactions (see the module's docstring)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{WRITER_OPTION: True})
    return engine.execution_options(isolation_level="SERIALIZABLE")


def immediate(engine: sa.Engine) -> sa.Engine:
    """`engine` for short writes that need no serialisable view, only their turn: on SQLite the
    write lock taken at BEGIN; PostgreSQL's row locks already order them."""
    return engine.execution_options(**{WRITER_OPTION: True})


def conflict(error: BaseException) -> bool:
    """Whether the database refused a transaction only because another ran beside it."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if state in _RETRY_STATES:
        return True
    text = str(error.orig).lower()
    return "database is locked" in text or "database is busy" in text


def retrying(do: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """`do()`, run again (after a short, growing, random pause) while the database refuses it for
    a conflict; a UserError saying so if it still does after `attempts`."""
    for attempt in range(attempts):
        try:
            return do()
        except sa.exc.DBAPIError as error:
            if not conflict(error):
                raise
            if attempt == attempts - 1:
                raise UserError(
                    "the central database stayed busy with other changes and this one could not "
                    "be made; nothing was changed: try again in a minute"
                ) from None
            time.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))
    raise AssertionError("unreachable")
