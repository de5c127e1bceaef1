"""`gpdpr portal role`: an administrator changes a person's roles; that person's portal sessions
end, and the change is recorded (as roles given) for the transparency log; anyone else, an
unknown role, and taking the last administrator's role are refused with a message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from governing import ADMIN, COLLEAGUE
from gpdpr.cli import app as cli
from gpdpr.db import connect, url_for_home
from gpdpr.db.models import Event
from gpdpr.governance.people import person
from gpdpr.portal.app import create_app
from gpdpr.portal.models import SessionRow
from gpdpr.portal.security import RateLimit
from portal_home import PASSWORD
from portal_small import CountingPasswords, small_home

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module: each test leaves the roles as it found them."""
    return small_home(tmp_path_factory.mktemp("roles"))


def _role(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["portal", "role", *args, "--home", str(home)])
    return result.exit_code, result.output


def _roles(home: Path, handle: str) -> set[str]:
    engine = connect(url_for_home(home))
    try:
        with Session(engine) as session:
            return set(person(session, handle).roles)
    finally:
        engine.dispose()


def test_an_administrator_changes_roles_the_sessions_end_and_it_is_recorded(home: Path) -> None:
    portal = create_app(home, passwords=CountingPasswords(), rate_limit=RateLimit())
    try:
        client = TestClient(portal, follow_redirects=False)
        page = client.get("/sign-in")
        found = CSRF.search(page.text)
        assert found is not None
        signed = client.post(
            "/sign-in",
            data={"handle": COLLEAGUE, "password": PASSWORD, "csrf_token": found.group(1)},
        )
        assert signed.status_code == 303
        assert client.get("/applications").status_code == 200
        before = _roles(home, COLLEAGUE)

        code, output = _role(home, COLLEAGUE, "--add", "output_checker", "--as", ADMIN)
        assert code == 0, output
        assert _roles(home, COLLEAGUE) == before | {"output_checker"}
        assert "sessions were ended" in output

        engine = portal.state.portal.engine
        with Session(engine) as session:
            left = session.scalar(
                sa.select(sa.func.count())
                .select_from(SessionRow)
                .where(SessionRow.handle == COLLEAGUE)
            )
            details = session.scalars(
                sa.select(Event.details)
                .where(Event.kind == "governance.person")
                .order_by(Event.id.desc())
                .limit(1)
            ).one()
        assert left == 0
        assert details["handle"] == COLLEAGUE and details["added"] == ["output_checker"]
        assert details["roles"] == sorted(before | {"output_checker"})
        # The old session signs nobody in any more.
        assert client.get("/applications").status_code != 200
    finally:
        portal.state.portal.close()

    code, output = _role(home, COLLEAGUE, "--remove", "output_checker", "--as", ADMIN)
    assert code == 0, output
    assert _roles(home, COLLEAGUE) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((COLLEAGUE, "--add", "administrator", "--as", COLLEAGUE), "needs the administrator"),
        ((COLLEAGUE, "--add", "superuser", "--as", ADMIN), "superuser: not a role"),
        ((ADMIN, "--remove", "administrator", "--as", ADMIN), "only administrator"),
        ((COLLEAGUE, "--add", "applicant", "--as", ADMIN), "nothing to change"),
        (("nobody", "--add", "applicant", "--as", ADMIN), "no one has the handle"),
    ],
)
def test_a_role_change_that_may_not_be_made_is_refused_and_changes_nothing(
    home: Path, args: tuple[str, ...], words: str
) -> None:
    before = _roles(home, COLLEAGUE), _roles(home, ADMIN)
    code, output = _role(home, *args)
    assert code == 2, output
    assert words in output
    assert "Traceback" not in output
    assert (_roles(home, COLLEAGUE), _roles(home, ADMIN)) == before
