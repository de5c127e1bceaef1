"""A second factor required per role (GPDPR_SECOND_FACTOR_ROLES): a staff member of such a role
who has none is sent to set one up before anything else, and is signed in only once a code made
with it is entered; other roles sign in as before; a role name that is not a staff role is
refused rather than leaving the role unguarded. A person signed in without one when their role
comes to need it (the setting changes, or `gpdpr portal role` gives them such a role) keeps no
access: their next request takes them to enrolment (or, their session ended by the role change,
to the sign-in and then enrolment). On each database, against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from databases import BACKENDS
from governing import ADMIN, CHECKERS, COLLEAGUE, PANEL
from gpdpr.cli import app as cli
from gpdpr.errors import UserError
from gpdpr.portal.app import create_app
from gpdpr.portal.second_factors import REQUIRED_ENV, required_roles
from gpdpr.portal.security import RateLimit
from gpdpr.portal.serve import running
from portal_home import PASSWORD, database
from portal_small import CountingPasswords, small_home

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SECRET = re.compile(r"<code>([A-Z2-7]{16,})</code>")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    made = create_app(
        small_home(tmp_path_factory.mktemp("roles")),
        passwords=CountingPasswords(),
        rate_limit=RateLimit(),
    )
    yield made
    made.state.portal.close()


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """A home on each database, and the portal serving it (its home, its address)."""
    with database(request.param):
        home = small_home(tmp_path_factory.mktemp(f"midway-{request.param}"))
        made = create_app(home, passwords=CountingPasswords(), rate_limit=RateLimit())
        try:
            with running(made) as url:
                yield home, url
        finally:
            made.state.portal.close()


def _token(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no form with a CSRF token"
    return found.group(1)


def _sign_in(client: TestClient | httpx.Client, handle: str) -> str:
    page = client.get("/sign-in")
    answer = client.post(
        "/sign-in", data={"handle": handle, "password": PASSWORD, "csrf_token": _token(page.text)}
    )
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def test_a_role_that_needs_a_second_factor_enrols_before_anything_else(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRED_ENV, "administrator")
    client = TestClient(app, follow_redirects=False)
    assert _sign_in(client, ADMIN) == "/sign-in/second-factor"

    # Half signed in: no staff page is reachable, not even the ordinary enrolment page.
    for path in ("/panel", "/admin", "/account/second-factor", "/applications"):
        answer = client.get(path)
        assert answer.status_code != 200, f"{path} answered before the second factor was set up"

    page = client.get("/sign-in/second-factor")
    assert page.status_code == 200 and "before anything else" in page.text
    secret = SECRET.search(page.text)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    wrong = client.post(
        "/sign-in/second-factor", data={"code": "000000", "csrf_token": _token(page.text)}
    )
    assert wrong.status_code == 400 and "not right" in wrong.text
    assert client.get("/panel").status_code != 200
    done = client.post(
        "/sign-in/second-factor", data={"code": totp.now(), "csrf_token": _token(wrong.text)}
    )
    assert done.status_code == 303 and done.headers["location"] == "/panel"
    assert client.get("/panel").status_code == 200

    # From then on the sign-in asks for the code, like any enrolled person's.
    again = TestClient(app, follow_redirects=False)
    assert _sign_in(again, ADMIN) == "/sign-in/code"


def test_a_role_that_does_not_need_one_signs_in_as_before(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRED_ENV, "administrator,output_checker")
    client = TestClient(app, follow_redirects=False)
    assert _sign_in(client, COLLEAGUE) == "/applications"
    assert client.get("/applications").status_code == 200


def test_the_enrolment_a_role_requires_cannot_be_reached_without_a_password(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRED_ENV, "administrator")
    client = TestClient(app, follow_redirects=False)
    answer = client.get("/sign-in/second-factor")
    assert answer.status_code == 303 and answer.headers["location"] == "/sign-in"


def test_a_role_name_that_is_not_a_staff_role_is_refused() -> None:
    assert required_roles("administrator, output_checker") == {"administrator", "output_checker"}
    assert required_roles("") == frozenset()
    with pytest.raises(UserError, match="administrater, which is not a staff role"):
        required_roles("administrater")
    with pytest.raises(UserError, match="patient"):
        required_roles("patient")


def test_a_portal_with_a_mistyped_role_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused when the portal is made, not at each staff member's request (where it was a bare
    500 for every one of them)."""
    monkeypatch.setenv(REQUIRED_ENV, "administrater")
    with pytest.raises(UserError, match="administrater, which is not a staff role"):
        create_app(tmp_path / "home", passwords=CountingPasswords(), rate_limit=RateLimit())
    assert not (tmp_path / "home").exists()  # nothing made of a service that did not start


def _browser(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=600, follow_redirects=False)


def _enrol_required(client: httpx.Client) -> str:
    """Set up the second factor the enrolment page offers; where the portal then sends them."""
    page = client.get("/sign-in/second-factor")
    assert page.status_code == 200 and "before anything else" in page.text
    secret = SECRET.search(page.text)
    assert secret is not None
    done = client.post(
        "/sign-in/second-factor",
        data={"code": pyotp.TOTP(secret.group(1)).now(), "csrf_token": _token(page.text)},
    )
    assert done.status_code == 303, done.text
    return done.headers["location"]


def test_a_role_coming_to_need_a_second_factor_sends_a_signed_in_person_to_enrol(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = served
    monkeypatch.delenv(REQUIRED_ENV, raising=False)
    with _browser(url) as checker, _browser(url) as panel:
        assert _sign_in(checker, CHECKERS[0]) == "/checking"
        assert _sign_in(panel, PANEL[0]) == "/panel"
        assert checker.get("/checking").status_code == 200
        page = checker.get("/account/second-factor")  # a form, to try a change with later
        assert page.status_code == 200

        monkeypatch.setenv(REQUIRED_ENV, "output_checker")
        answer = checker.get("/checking?tab=open")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/sign-in/second-factor"
        # Nothing of theirs is reachable, and no form of theirs is taken, until they enrol.
        for path in ("/checking", "/account/second-factor", "/panel"):
            reached = checker.get(path)
            assert reached.status_code == 303, path
            assert reached.headers["location"] == "/sign-in/second-factor", path
        refused = checker.post(
            "/account/second-factor", data={"code": "123456", "csrf_token": _token(page.text)}
        )
        assert refused.status_code == 403 and "needs a second factor" in refused.text
        # Someone whose role does not need one keeps their session.
        assert panel.get("/panel").status_code == 200

        assert _enrol_required(checker) == "/checking?tab=open"  # back where they were
        assert checker.get("/checking").status_code == 200
    with _browser(url) as again:
        assert _sign_in(again, CHECKERS[0]) == "/sign-in/code"


def test_a_role_given_that_needs_a_second_factor_ends_the_session_then_enrolment(
    served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, url = served
    monkeypatch.setenv(REQUIRED_ENV, "administrator")
    with _browser(url) as member:
        assert _sign_in(member, PANEL[1]) == "/panel"
        role = ["portal", "role", PANEL[1], "--as", ADMIN, "--add", "administrator"]
        given = CliRunner().invoke(cli, [*role, "--home", str(home)])
        assert given.exit_code == 0, given.output
        answer = member.get("/panel")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/sign-in")
        assert member.get("/admin").status_code != 200
        assert _sign_in(member, PANEL[1]) == "/sign-in/second-factor"
        assert member.get("/admin").status_code != 200
        assert _enrol_required(member) == "/admin"  # the page they asked for while half in
        assert member.get("/admin").status_code == 200
