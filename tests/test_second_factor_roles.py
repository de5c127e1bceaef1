"""A second factor required per role (GPDPR_SECOND_FACTOR_ROLES): a staff member of such a role
who has none is sent to set one up before anything else, and is signed in only once a code made
with it is entered; other roles sign in as before; a role name that is not a staff role is
refused rather than leaving the role unguarded."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from governing import ADMIN, COLLEAGUE
from gpdpr.errors import UserError
from gpdpr.portal.app import create_app
from gpdpr.portal.second_factors import REQUIRED_ENV, required_roles
from gpdpr.portal.security import RateLimit
from portal_home import PASSWORD
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


def _token(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no form with a CSRF token"
    return found.group(1)


def _sign_in(client: TestClient, handle: str) -> str:
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
