"""What the portal's pages act through: the service home, its central database, and one
transaction per action.

On SQLite the portal's writes are serialised by a lock in this process: SQLite has one writer at
a time, and a transaction that read before another wrote cannot then write (SQLITE_BUSY at once,
which no busy timeout waits out). PostgreSQL takes concurrent writers as they come.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr.db import connect, url_for_home
from gpdpr.portal.security import Passwords, RateLimit, Sessions

if TYPE_CHECKING:
    from gpdpr.custodian.central import Custodian
    from gpdpr.optout.registry import Registry

T = TypeVar("T")


class Portal:
    """One portal over one service home."""

    def __init__(
        self, home: Path, passwords: Passwords | None = None, rate_limit: RateLimit | None = None
    ) -> None:
        self.home = home
        self.engine: sa.Engine = connect(url_for_home(home))
        self.passwords = passwords or Passwords()
        self.rate_limit = rate_limit or RateLimit()
        self.sessions = Sessions(self.engine)
        self._write = threading.Lock() if self.engine.dialect.name == "sqlite" else None

    @cached_property
    def custodian(self) -> Custodian:
        """Made when first needed: only patients' sign-ins need the custodian's keys."""
        from gpdpr.custodian.central import Custodian

        return Custodian(self.home / "keys", self.engine)

    @cached_property
    def registry(self) -> Registry:
        from gpdpr.optout.registry import Registry

        return Registry(self.engine)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the write lock (SQLite) for everything done inside."""
        if self._write is None:
            yield
        else:
            with self._write:
                yield

    def act(self, do: Callable[[Session], T]) -> T:
        """Run `do` in one transaction: committed if it returns, rolled back (nothing changed)
        if it raises."""
        with (
            self.writing(),
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            return do(session)

    def read(self, do: Callable[[Session], T]) -> T:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            return do(session)

    def close(self) -> None:
        self.engine.dispose()
