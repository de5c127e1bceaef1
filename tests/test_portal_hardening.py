"""The portal's edges, on each database: HEAD answers every page as GET does; every error page,
an unhandled one included, is the site's page with the security headers and no traceback;
control characters (NUL above all) are refused with a message and change nothing; names of
organisations and people are normalised (NFKC) and refused when they could pass for another."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from databases import BACKENDS
from governing import ADMIN, LEEDS, act
from gpdpr.errors import UserError
from gpdpr.governance import names, people
from gpdpr.governance.models import Organisation, Person
from gpdpr.portal.app import HEADERS, api_routes, create_app
from gpdpr.portal.security import PUBLIC, GuardedRoute, RateLimit, allow
from portal_home import FAST, PASSWORD, database
from portal_small import small_home

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CANARY = "canary-7f3a9c-internal-detail"


@pytest.fixture(scope="module", params=BACKENDS)
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    with database(request.param):
        home = small_home(tmp_path_factory.mktemp(f"hardening-{request.param}"))
        made = create_app(home, passwords=FAST, rate_limit=RateLimit())

        @allow(PUBLIC)
        def broken(request: Request) -> dict[str, str]:
            raise RuntimeError(f"{CANARY} the database password is hunter2")

        made.router.routes.append(GuardedRoute("/broken", broken, methods=["GET", "HEAD"]))
        yield made
        made.state.portal.close()


def visitor(app: FastAPI) -> TestClient:
    app.state.portal.rate_limit.clear(app.state.portal.engine)
    return TestClient(app, follow_redirects=False, raise_server_exceptions=False)


def admin(app: FastAPI) -> TestClient:
    client = visitor(app)
    page = client.get("/sign-in")
    signed = client.post(
        "/sign-in", data={"handle": ADMIN, "password": PASSWORD, "csrf_token": token(page.text)}
    )
    assert signed.status_code == 303
    return client


def token(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no form with a CSRF token"
    return found.group(1)


def has_security_headers(answer: object) -> bool:
    headers = answer.headers  # type: ignore[attr-defined]
    return all(headers.get(name) == value for name, value in HEADERS.items())


def test_every_page_answers_head_as_it_answers_get(app: FastAPI) -> None:
    pages = sorted(
        r.path
        for r in api_routes(app)
        if r.methods and "GET" in r.methods and "{" not in r.path and r.path != "/broken"
    )
    assert len(pages) > 15
    for client in (visitor(app), admin(app)):
        for path in pages:
            got, head = client.get(path), client.head(path)
            assert head.status_code == got.status_code != 405, path
            assert head.content == b"", path
            assert has_security_headers(head), path


def test_an_unhandled_error_is_the_sites_error_page_with_the_security_headers(
    app: FastAPI,
) -> None:
    client = visitor(app)
    for answer in (client.get("/broken"), client.get("/broken?x=1")):
        assert answer.status_code == 500
        assert answer.headers["content-type"].startswith("text/html")
        assert has_security_headers(answer)
        assert "Something went wrong on our side" in answer.text
        assert "<nav" in answer.text  # the site's own page, with its navigation
        assert CANARY not in answer.text and "hunter2" not in answer.text
        assert "Traceback" not in answer.text
    head = client.head("/broken")
    assert head.status_code == 500 and has_security_headers(head)


def test_every_error_page_carries_the_security_headers(app: FastAPI) -> None:
    client = visitor(app)
    for path, status in (("/no-such-page", 404), ("/admin", 303), ("/static/none.css", 404)):
        answer = client.get(path)
        assert answer.status_code == status and has_security_headers(answer), path
    refused = client.post("/sign-in", data={"handle": "x"})  # no CSRF token
    assert refused.status_code == 403 and has_security_headers(refused)
    wrong = client.put("/")
    assert wrong.status_code == 405 and has_security_headers(wrong)


@pytest.mark.parametrize("bad", ["\x00", "\x07", "\x1b[31m", "\x85", "\x7f"])
def test_control_characters_are_refused_with_a_message_and_change_nothing(
    app: FastAPI, bad: str
) -> None:
    client = admin(app)
    engine = app.state.portal.engine
    with engine.connect() as connection:
        before = connection.execute(sa.select(sa.func.count()).select_from(Organisation)).scalar()
    page = client.get("/admin")
    answer = client.post(
        "/admin/organisations",
        data={"name": f"Harmless{bad}Trust", "kind": "charity", "csrf_token": token(page.text)},
    )
    assert answer.status_code == 400
    assert "control character" in answer.text and "nothing was done" in answer.text
    assert has_security_headers(answer)
    with engine.connect() as connection:
        after = connection.execute(sa.select(sa.func.count()).select_from(Organisation)).scalar()
    assert after == before
    searched = client.get("/register", params={"q": f"diabetes{bad}"})
    assert searched.status_code == 400 and "control character" in searched.text
    escaped = "".join(f"%{b:02X}" for b in bad.encode())
    assert client.get(f"/register{escaped}").status_code == 404  # no page has such an address
    sign_in = visitor(app)
    page = sign_in.get("/sign-in")
    refused = sign_in.post(
        "/sign-in",
        data={"handle": f"admin{bad}", "password": PASSWORD, "csrf_token": token(page.text)},
    )
    assert refused.status_code == 400 and "control character" in refused.text


def test_tabs_and_line_breaks_are_still_taken(app: FastAPI) -> None:
    client = admin(app)
    page = client.get("/admin")
    answer = client.post(
        "/admin/organisations",
        data={"name": "Tab\tSeparated\r\nTrust", "kind": "charity", "csrf_token": token(page.text)},
    )
    # A name holds no tab or line break either, but that is the name check's refusal, which
    # says what is wrong with the name.
    assert answer.status_code == 400 and "unnamed character U+0009 at character 4" in answer.text


# ---- names -------------------------------------------------------------------------------------

IMPERSONATIONS = {
    "University of Leeds\u202e": "RIGHT-TO-LEFT OVERRIDE",
    "University of\u200bLeeds": "ZERO WIDTH SPACE",
    "Univ\u0435rsity of Leeds": "mixes letters of different scripts",  # Cyrillic е
    "University of Lееds": "mixes letters of different scripts",
    "University 0f Leeds": "looks like the organisation 'University of Leeds'",
    "UNIVERSITY OF LEEDS": "looks like the organisation 'University of Leeds'",
    "University of Leéds": "looks like the organisation 'University of Leeds'",
    "Un1versity of Leeds": "looks like the organisation 'University of Leeds'",
    "Ｕｎｉｖｅｒｓｉｔｙ of Leeds": "already an organisation called 'University of Leeds'",
    "University  of   Leeds": "already an organisation called 'University of Leeds'",
}


def test_organisation_names_that_could_pass_for_another_are_refused(app: FastAPI) -> None:
    client = admin(app)
    engine = app.state.portal.engine
    with engine.connect() as connection:
        before = connection.execute(sa.select(Organisation.name)).scalars().all()
    assert LEEDS in before
    for name, reason in IMPERSONATIONS.items():
        page = client.get("/admin")
        answer = client.post(
            "/admin/organisations",
            data={"name": name, "kind": "university", "csrf_token": token(page.text)},
        )
        assert answer.status_code == 400, name
        assert reason in answer.text.replace("&#39;", "'"), (name, answer.text[-600:])
    with engine.connect() as connection:
        assert connection.execute(sa.select(Organisation.name)).scalars().all() == before


def test_names_are_stored_in_nfkc_and_people_are_checked_too(app: FastAPI) -> None:
    engine = app.state.portal.engine
    made = act(
        engine,
        lambda s: people.add_organisation(s, ADMIN, "  Ｎｏｒｔｈ   Health Trust ", "charity").name,
    )
    assert made == "North Health Trust"
    act(
        engine,
        lambda s: people.add_person(
            s, ADMIN, "z.new", "Zoë  Ａdams", "z@example.org", "North  Health Trust", ["applicant"]
        ),
    )
    with engine.connect() as connection:
        stored = connection.execute(sa.select(Person.name).where(Person.handle == "z.new")).scalar()
    assert stored == "Zoë Adams" and unicodedata.is_normalized("NFKC", stored)
    for name in ("Eve\u202eevE", "Mal\u200dlory", "Р\u0430ul Smith", "Bob\x00"):
        with pytest.raises(UserError, match=r"may not hold|mixes letters"):

            def add_named(s: Session, n: str = name) -> object:
                return people.add_person(
                    s, ADMIN, "z.bad", n, "zb@example.org", None, ["panel_member"]
                )

            act(engine, add_named)
    for handle in ("z.bad\n", "Z.BAD"):
        with pytest.raises(UserError, match="handle"):

            def add_handled(s: Session, h: str = handle) -> object:
                return people.add_person(
                    s, ADMIN, h, "Zed", "zb@example.org", None, ["panel_member"]
                )

            act(engine, add_handled)


def test_names_in_other_scripts_are_welcome() -> None:
    for name in ("Université de Montréal", "Πανεπιστήμιο Αθηνών", "東京大学", "O'Brien & Sons"):
        assert names.clean(name, "a name") == name


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(max_size=40))
def test_a_checked_name_is_normal_visible_and_checked_the_same_again(text: str) -> None:
    try:
        cleaned = names.clean(text, "a name")
    except UserError as error:
        assert "name" in str(error)
        return
    assert cleaned == unicodedata.normalize("NFKC", cleaned) == cleaned.strip()
    assert all(ch in " +&" or unicodedata.category(ch)[0] in "LMNP" for ch in cleaned), ascii(
        cleaned
    )
    assert names.clean(cleaned, "a name") == cleaned
    assert names.skeleton(cleaned) == names.skeleton(text)
