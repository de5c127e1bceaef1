"""The portal through its HTTP interface (FastAPI's TestClient), on a real service home on each
database: every route has a declared policy and anything else fails closed; sessions, CSRF and the
sign-in rate limit; the patient's OpenID Connect sign-in and opt-outs; applications through the
panel; output checking to the register; a role x route x own/other-object matrix; and every
form's bad input refused with a clear error and nothing changed."""

from __future__ import annotations

import csv
import hashlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from databases import BACKENDS
from governing import ADMIN, BOTH, CHECKERS, COLLEAGUE, LEAD, PANEL, VENDOR, snapshot
from gpdpr.db.models import Event, OptOutEvent
from gpdpr.errors import UserError
from gpdpr.portal.app import api_routes, create_app
from gpdpr.portal.idp import CLIENT_ID, ISSUER, verify_id_token
from gpdpr.portal.security import COOKIE, GuardedRoute, RateLimit, allow, policy_of
from gpdpr.spec import shipped
from portal_home import (
    FAST,
    MEASURED,
    PASSWORD,
    STUDY,
    Home,
    build,
    database,
    patient_email,
    study,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Portal:
    built: Home
    app: FastAPI


@pytest.fixture(scope="module", params=BACKENDS)
def portal(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Portal]:
    with database(request.param):
        built = build(tmp_path_factory.mktemp(f"portal-{request.param}"))
        app = create_app(built.home, passwords=FAST, rate_limit=RateLimit(), dummy_patients=400)
        yield Portal(built, app)
        app.state.portal.close()
        built.engine.dispose()


def client(portal: Portal, https: bool = False) -> TestClient:
    # Each client is a new visitor; the counts cleared so one test's failures do not block another.
    portal.app.state.portal.rate_limit.clear(portal.app.state.portal.engine)
    return TestClient(
        portal.app,
        base_url="https://testserver" if https else "http://testserver",
        follow_redirects=False,
    )


def token_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def staff(portal: Portal, handle: str) -> TestClient:
    browser = client(portal)
    page = browser.get("/sign-in")
    answer = browser.post(
        "/sign-in",
        data={"handle": handle, "password": PASSWORD, "csrf_token": token_of(page.text)},
    )
    assert answer.status_code == 303, answer.text
    return browser


def patient(portal: Portal, n: int = 1) -> TestClient:
    browser = client(portal)
    start = browser.get("/patient/sign-in")
    assert start.status_code == 303 and start.headers["location"].startswith("/idp/authorize?")
    login = browser.get(start.headers["location"])
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', login.text))
    fields.update(email=patient_email(n), password=PASSWORD)
    back = browser.post("/idp/authorize", data=fields)
    assert back.status_code == 303, back.text
    assert back.headers["location"].startswith("http://testserver/patient/callback?code=")
    done = browser.get(back.headers["location"])
    assert done.status_code == 303 and done.headers["location"] == "/patient", done.text
    return browser


def post(browser: TestClient, path: str, form_page: str, **data: object) -> httpx.Response:
    page = browser.get(form_page)
    answer: httpx.Response = browser.post(path, data={**data, "csrf_token": token_of(page.text)})
    return answer


# ---- deny by default ---------------------------------------------------------------------------


def test_every_route_declares_who_may_reach_it(portal: Portal) -> None:
    routes = api_routes(portal.app)
    assert len(routes) > 30
    missing = [r.path for r in routes if policy_of(r.endpoint) is None]
    assert missing == []
    assert all(isinstance(r, GuardedRoute) for r in routes)


def test_a_route_without_a_policy_is_refused_to_everyone() -> None:
    from gpdpr.db import connect
    from gpdpr.portal.security import Sessions

    app = FastAPI()
    app.state.sessions = Sessions(connect("sqlite://"))
    app.router.route_class = GuardedRoute

    @app.get("/forgotten")
    def forgotten(request: Request) -> dict[str, str]:
        return {"secret": "leaked"}

    @app.get("/open")
    @allow("public")
    def open_page(request: Request) -> dict[str, str]:
        return {"ok": "yes"}

    with TestClient(app) as browser:
        refused = browser.get("/forgotten")
        assert refused.status_code == 403 and "leaked" not in refused.text
        assert browser.get("/open").json() == {"ok": "yes"}


# ---- public pages ------------------------------------------------------------------------------


def test_what_a_visitor_types_is_escaped_on_every_page_it_shows_on(portal: Portal) -> None:
    """Templates end in .j2, which Jinja's default autoescaping would not recognise: escaping
    is switched on for all of them, so a search term cannot become markup."""
    probe = '"><script>alert(1)</script>'
    for path in (f"/register?q={probe}", f"/log?type={probe}"):
        page = client(portal).get(path, params=None).text
        assert "<script>alert(1)</script>" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_what_we_collect_is_rendered_from_the_specification(portal: Portal) -> None:
    page = html.unescape(client(portal).get("/what-we-collect").text)
    spec = shipped()
    for item in spec.never_collected.values():
        assert item.title in page and item.reason.split(".")[0] in page
    for table in spec.tables.values():
        assert table.title in page
        for field in table.fields:
            assert f"<code>{field.name}</code>" in page
    assert spec.version in page


def test_public_pages_answer_without_signing_in(portal: Portal) -> None:
    browser = client(portal)
    for path, words in (
        ("/", "how to opt out"),
        ("/safeguards", "Marketing is excluded"),
        ("/opting-out", "Type 1 opt-out"),
        ("/statistics", "<svg"),
        ("/register", "Type 2 diabetes care and deprivation"),
    ):
        page = browser.get(path)
        assert page.status_code == 200, path
        assert words.lower() in page.text.lower(), path
        assert page.text.count("<h1") == 1


def test_the_register_is_searched_and_filtered(portal: Portal) -> None:
    browser = client(portal)
    found = browser.get("/register", params={"q": "diabetes deprivation"}).text
    assert "Type 2 diabetes care and deprivation" in found
    assert "Type 2 diabetes care" not in browser.get("/register", params={"q": "zebra"}).text
    commercial = browser.get("/register", params={"commercial": "yes"}).text
    assert "Approved projects (0)" in commercial
    research = browser.get("/register", params={"purpose": "research", "status": "active"}).text
    assert "Approved projects (1)" in research


def test_statistics_count_the_lake_and_draw_charts(portal: Portal) -> None:
    page = client(portal).get("/statistics").text
    assert "patients from 2 GP practices" in page and "Patients covered, by region" in page
    assert page.count("<svg") == 8 and "<title" in page  # each chart drawn wide and narrow


def test_an_unknown_page_is_a_page_not_a_stack_trace(portal: Portal) -> None:
    answer = client(portal).get("/no/such/page")
    assert answer.status_code == 404 and "<h1>Page not found</h1>" in answer.text


# ---- sessions and CSRF -------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_lax_and_secure_only_over_tls(portal: Portal) -> None:
    plain = client(portal).get("/sign-in").headers["set-cookie"]
    assert f"{COOKIE}=" in plain and "HttpOnly" in plain and "SameSite=lax" in plain
    assert "Secure" not in plain
    tls = client(portal, https=True).get("/sign-in").headers["set-cookie"]
    assert "Secure" in tls and "HttpOnly" in tls


def test_signing_in_changes_the_session_id_and_signing_out_ends_it(portal: Portal) -> None:
    browser = client(portal)
    browser.get("/sign-in")
    before = browser.cookies[COOKIE]
    page = browser.get("/sign-in")
    browser.post(
        "/sign-in", data={"handle": LEAD, "password": PASSWORD, "csrf_token": token_of(page.text)}
    )
    after = browser.cookies[COOKIE]
    assert after != before
    assert browser.get("/applications").status_code == 200
    post(browser, "/sign-out", "/applications")
    stale = client(portal)
    stale.cookies.set(COOKIE, after)
    assert stale.get("/applications").status_code == 303  # to the sign-in page


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_a_post_without_the_right_csrf_token_is_refused_and_changes_nothing(
    portal: Portal, token: str | None
) -> None:
    browser = patient(portal, 2)
    before = snapshot(portal.built.engine)
    data = {"kind": "type1", "action": "set"}
    if token is not None:
        data["csrf_token"] = token
    answer = browser.post("/patient/opt-out", data=data)
    assert answer.status_code == 403 and "nothing was done" in answer.text
    assert snapshot(portal.built.engine) == before
    signin = client(portal).post("/sign-in", data={"handle": LEAD, "password": PASSWORD})
    assert signin.status_code == 403


# ---- sign-in and its rate limit ------------------------------------------------------------------


def test_wrong_passwords_are_refused_the_same_way_and_then_rate_limited(portal: Portal) -> None:
    browser = client(portal)
    for handle in (LEAD, "nobody.here"):
        page = browser.get("/sign-in")
        answer = browser.post(
            "/sign-in",
            data={"handle": handle, "password": "wrong!", "csrf_token": token_of(page.text)},
        )
        assert answer.status_code == 400 and "handle or password is not right" in answer.text
    for _ in range(4):
        page = browser.get("/sign-in")
        browser.post(
            "/sign-in",
            data={"handle": LEAD, "password": "wrong!", "csrf_token": token_of(page.text)},
        )
    page = browser.get("/sign-in")
    blocked = browser.post(
        "/sign-in", data={"handle": LEAD, "password": PASSWORD, "csrf_token": token_of(page.text)}
    )
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text
    assert COOKIE not in blocked.headers.get("set-cookie", "") or blocked.status_code == 429
    assert browser.get("/applications").status_code == 303  # not signed in


def test_failures_from_one_address_across_accounts_are_rate_limited(portal: Portal) -> None:
    browser = client(portal)
    for n in range(20):
        page = browser.get("/sign-in")
        browser.post(
            "/sign-in",
            data={"handle": f"guess{n}", "password": "x", "csrf_token": token_of(page.text)},
        )
    page = browser.get("/sign-in")
    blocked = browser.post(
        "/sign-in",
        data={"handle": COLLEAGUE, "password": PASSWORD, "csrf_token": token_of(page.text)},
    )
    assert blocked.status_code == 429


# ---- patients ----------------------------------------------------------------------------------


def test_a_patient_signs_in_opts_out_and_back_in_and_no_nhs_number_is_kept(portal: Portal) -> None:
    browser = patient(portal, 3)
    number = portal.built.nhs_numbers[2]
    page = browser.get("/patient")
    assert "Your opt-outs" in page.text and "Not set" in page.text
    done = browser.post(
        "/patient/opt-out",
        data={"kind": "type1", "action": "set", "csrf_token": token_of(page.text)},
    )
    assert done.status_code == 303
    shown = browser.get("/patient").text
    assert (
        "Your Type 1 opt-out is recorded" in shown and "erased at the next erasure cycle" in shown
    )
    assert "Set since" in shown
    withdrawn = browser.post(
        "/patient/opt-out",
        data={"kind": "type1", "action": "withdraw", "csrf_token": token_of(shown)},
    )
    assert withdrawn.status_code == 303
    assert "Your Type 1 opt-out is withdrawn" in browser.get("/patient").text
    with portal.built.engine.connect() as connection:
        events = connection.execute(sa.select(OptOutEvent.action, OptOutEvent.source)).all()
        details = [str(r) for r in connection.execute(sa.select(Event.actor, Event.details))]
    assert ("set", "online") in events and ("withdrawn", "online") in events
    assert not any(number in text for text in details)
    with portal.built.engine.connect() as connection:
        sessions = connection.exec_driver_sql("SELECT * FROM portal_sessions").all()
    assert sessions and not any(number in repr(row) for row in sessions)
    for stored in portal.built.home.glob("central.db*"):  # SQLite: the database's own bytes
        raw = stored.read_bytes()
        assert number.encode() not in raw and f"{number[:3]} {number[3:6]}".encode() not in raw


def test_a_patient_page_needs_a_patient(portal: Portal) -> None:
    assert client(portal).get("/patient").headers["location"].startswith("/patient/sign-in")
    assert staff(portal, LEAD).get("/patient").status_code == 403


def test_a_bad_opt_out_choice_changes_nothing(portal: Portal) -> None:
    browser = patient(portal, 4)
    before = snapshot(portal.built.engine)
    answer = post(browser, "/patient/opt-out", "/patient", kind="type9", action="set")
    assert answer.status_code == 400 and "Choose which opt-out" in answer.text
    assert snapshot(portal.built.engine) == before


def test_a_callback_that_did_not_start_here_is_refused(portal: Portal) -> None:
    browser = client(portal)
    answer = browser.get("/patient/callback", params={"code": "x", "state": "y" * 20})
    assert answer.status_code == 400
    browser.get("/patient/sign-in")
    assert (
        browser.get("/patient/callback", params={"code": "x", "state": "z" * 32}).status_code == 400
    )


def test_the_identity_provider_refuses_bad_requests_and_passwords(portal: Portal) -> None:
    browser = client(portal)
    start = browser.get("/patient/sign-in").headers["location"]
    assert browser.get(start.replace("S256", "plain")).status_code == 400
    evil = start.replace("redirect_uri=http", "redirect_uri=https%3A%2F%2Fevil.example%2F&x=")
    assert browser.get(evil).status_code == 400
    login = browser.get(start)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', login.text))
    fields.update(email=patient_email(1), password="not the password")
    refused = browser.post("/idp/authorize", data=fields)
    assert refused.status_code == 400 and "not right" in refused.text


def test_an_id_token_is_verified_signature_issuer_audience_expiry_and_nonce(portal: Portal) -> None:
    idp = portal.app.state.idp
    jwks = idp.jwks()
    claims = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "x",
        "iat": 2_000_000_000,
        "exp": 2_000_000_300,
        "nonce": "n" * 20,
        "nhs_number": "9990000018",
    }
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    with pytest.raises(UserError, match="not accepted"):
        verify_id_token(forged, jwks, "n" * 20)
    good = jwt.encode(claims, idp._key, algorithm="EdDSA")
    with pytest.raises(UserError):  # issued in the future (2033)
        verify_id_token(good, jwks, "n" * 20)
    import time

    now = int(time.time())
    fresh = {**claims, "iat": now, "exp": now + 60}
    assert verify_id_token(jwt.encode(fresh, idp._key, algorithm="EdDSA"), jwks, "n" * 20)
    with pytest.raises(UserError, match="another sign-in"):
        verify_id_token(jwt.encode(fresh, idp._key, algorithm="EdDSA"), jwks, "m" * 20)
    for changed in ({"aud": "someone-else"}, {"iss": "https://evil.example"}, {"exp": now - 100}):
        with pytest.raises(UserError):
            verify_id_token(
                jwt.encode({**fresh, **changed}, idp._key, algorithm="EdDSA"), jwks, "n" * 20
            )
    with pytest.raises(UserError):  # alg none
        verify_id_token(jwt.encode(fresh, None, algorithm="none"), jwks, "n" * 20)  # type: ignore[arg-type]


def test_a_code_is_used_once_and_only_with_its_pkce_verifier(portal: Portal) -> None:
    from gpdpr.portal.idp import s256

    idp = portal.app.state.idp
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": "http://testserver/patient/callback",
        "code_challenge": s256("v" * 50),
        "nonce": "n" * 20,
    }
    code = idp.issue_code(patient_email(1), params)
    with pytest.raises(UserError, match="PKCE"):
        idp.exchange(code, CLIENT_ID, params["redirect_uri"], "w" * 50)
    code = idp.issue_code(patient_email(1), params)
    assert idp.exchange(code, CLIENT_ID, params["redirect_uri"], "v" * 50)
    with pytest.raises(UserError, match="used or expired"):
        idp.exchange(code, CLIENT_ID, params["redirect_uri"], "v" * 50)


# ---- applications through the panel, over HTTP ----------------------------------------------

APPLICATION = {
    "title": "Asthma reviews by deprivation",
    "purpose_category": "research",
    "lay_summary": "Do people with asthma in poorer areas get a yearly review?",
    "technical_summary": "Annual asthma review codes by IMD decile.",
    "expected_benefit": "Shows where asthma care falls short.",
    "legal_basis": "public_task_research",
    "data_from": "2016-01-01",
    "data_to": "2025-12-31",
    "duration_months": "12",
    "min_age": "5",
    "items": ["patients.patient", "clinical_events.code"],
    "why.patients.patient": "to count people once",
    "why.clinical_events.code": "asthma and its reviews",
}


def apply(browser: TestClient, **changes: object) -> httpx.Response:
    return post(browser, "/applications/new", "/applications/new", **{**APPLICATION, **changes})


def test_an_application_goes_from_the_form_through_the_panel_to_an_agreement(
    portal: Portal,
) -> None:
    lead = staff(portal, LEAD)
    made = apply(lead)
    assert made.status_code == 303
    reference = made.headers["location"].rsplit("/", 1)[1]
    page = lead.get(f"/applications/{reference}").text
    assert "saved as a draft" in page and "Asthma reviews by deprivation" in page
    submitted = post(lead, f"/applications/{reference}/submit", f"/applications/{reference}")
    assert submitted.status_code == 303
    assert "is submitted" in lead.get(f"/applications/{reference}").text
    admin = staff(portal, ADMIN)
    assert reference in admin.get("/panel").text
    post(admin, f"/panel/{reference}/start-review", f"/applications/{reference}")
    for member in PANEL:
        voter = staff(portal, member)
        answer = post(
            voter, f"/panel/{reference}/vote", f"/applications/{reference}", vote="approve"
        )
        assert answer.status_code == 303, answer.text
        assert "Your vote is recorded" in voter.get(f"/applications/{reference}").text
    decided = post(
        admin,
        f"/panel/{reference}/decide",
        f"/applications/{reference}",
        minutes="Approved: proportionate.",
        conditions="Publish only at decile level\n",
    )
    assert decided.status_code == 303
    issued = post(admin, f"/panel/{reference}/agreement", f"/applications/{reference}")
    assert issued.status_code == 303
    page = admin.get(f"/applications/{reference}").text
    assert "Agreement active" in page and "Publish only at decile level" in page
    assert "Asthma reviews by deprivation" in client(portal).get("/register").text


def test_a_marketing_application_is_refused_at_once_with_the_reason(portal: Portal) -> None:
    lead = staff(portal, LEAD)
    reference = apply(lead, uses_for_marketing="yes").headers["location"].rsplit("/", 1)[1]
    post(lead, f"/applications/{reference}/submit", f"/applications/{reference}")
    assert "Marketing is excluded" in lead.get(f"/applications/{reference}").text


def test_a_conflicted_member_cannot_vote_and_is_told_why(portal: Portal) -> None:
    from governing import PANEL_FROM_LEEDS, bring_to

    reference = bring_to(portal.built.engine, "under_review")
    member = staff(portal, PANEL_FROM_LEEDS)
    page = member.get(f"/applications/{reference}").text
    assert "You may not vote" in page and "University of Leeds" in page
    before = snapshot(portal.built.engine)
    refused = post(member, f"/panel/{reference}/vote", f"/applications/{reference}", vote="approve")
    assert refused.status_code == 400 and "cannot vote" in refused.text
    assert snapshot(portal.built.engine) == before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_from": "2016-13-45"}, "is not a date"),
        ({"duration_months": "ten"}, "is not a whole number"),
        ({"duration_months": "99"}, "duration_months"),
        ({"purpose_category": "espionage"}, "purpose_category"),
        ({"items": ["patients.name"], "why.patients.name": "x"}, "'patients.name': no research"),
        ({"min_age": "70", "max_age": "20"}, "no one fits"),
        ({"title": ""}, "needs a title"),
        ({"team": "nobody.known"}, "nobody.known"),
        ({"collaborators": ["No Such Org"]}, "No Such Org"),
    ],
)
def test_a_bad_application_form_is_refused_naming_the_field_and_saves_nothing(
    portal: Portal, changes: dict[str, object], message: str
) -> None:
    lead = staff(portal, LEAD)
    before = snapshot(portal.built.engine)
    answer = apply(lead, **changes)
    assert answer.status_code == 400 and message in answer.text.replace("&#39;", "'")
    assert "Nothing was changed" in answer.text
    assert snapshot(portal.built.engine) == before


@pytest.mark.parametrize(
    ("path", "form", "message"),
    [
        (
            "/admin/people",
            {
                "handle": "Bad Handle",
                "name": "x",
                "email": "x@example.org",
                "roles": ["applicant"],
                "password": "long enough pw",
            },
            "handle",
        ),
        (
            "/admin/people",
            {
                "handle": "new.one",
                "name": "x",
                "email": "not-an-email",
                "roles": ["panel_member"],
                "password": "long enough pw",
            },
            "email",
        ),
        (
            "/admin/people",
            {
                "handle": "new.two",
                "name": "x",
                "email": "x@example.org",
                "roles": ["panel_member"],
                "password": "short",
            },
            "10 characters",
        ),
        ("/admin/organisations", {"name": "", "kind": "university"}, "needs a name"),
        ("/admin/organisations", {"name": "Acme", "kind": "cartel"}, "not one of"),
    ],
)
def test_bad_administration_forms_are_refused_and_change_nothing(
    portal: Portal, path: str, form: dict[str, object], message: str
) -> None:
    admin = staff(portal, ADMIN)
    before = snapshot(portal.built.engine)
    answer = post(admin, path, "/admin", **form)
    assert answer.status_code == 400 and message in answer.text
    assert snapshot(portal.built.engine) == before


# ---- research and output checking ----------------------------------------------------------------


def compiled(folder: Path, text: str) -> bytes:
    from gpdpr.tre import runs

    (folder / "study.py").write_text(text)
    return runs.compile_file(folder / "study.py")


@pytest.fixture(scope="module")
def definition(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compiled(tmp_path_factory.mktemp("study"), STUDY)


@pytest.fixture(scope="module")
def only_leads(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A definition only LEAD uploads (definitions are kept per person, by content)."""
    return compiled(tmp_path_factory.mktemp("matrix"), STUDY.replace("adults_by_sex", "matrix"))


def upload(browser: TestClient, document: bytes, name: str = "study.json") -> httpx.Response:
    page = browser.get("/research")
    answer: httpx.Response = browser.post(
        "/research/definitions",
        data={"csrf_token": token_of(page.text)},
        files={"definition": (name, document, "application/json")},
    )
    return answer


def run_of(browser: TestClient, portal: Portal, document: bytes) -> str:
    """Upload `document` and run it under the agreement; the run's page."""
    page_path = upload(browser, document).headers["location"]
    ran = post(browser, f"{page_path}/run", page_path, agreement=portal.built.agreement)
    assert ran.status_code == 303, ran.text
    return str(ran.headers["location"])


def ask_for(browser: TestClient, run_path: str, files: list[str], title: str) -> str:
    """Ask for `files` of the run; the request's reference."""
    asked = post(browser, f"{run_path}/request", run_path, files=files, title=title)
    assert asked.status_code == 303, asked.text
    return str(asked.headers["location"]).rsplit("/", 1)[1]


def add_checker(portal: Portal, handle: str, organisation: str | None) -> None:
    from governing import act
    from gpdpr.governance import people
    from gpdpr.portal.accounts import set_password

    def add(s: Session) -> None:
        people.add_person(
            s, ADMIN, handle, handle, f"{handle}@example.org", organisation, ["output_checker"]
        )
        set_password(s, FAST, handle, PASSWORD)

    act(portal.built.engine, add)


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as reading:
        return list(csv.reader(reading))


def output_tables(page: str) -> dict[str, dict[tuple[int, str], tuple[str, str | None]]]:
    """Each file's table on a page: {(row, column): (text as published, status or None)}."""
    found: dict[str, dict[tuple[int, str], tuple[str, str | None]]] = {}
    for table in re.findall(r'<table class="output">(.*?)</table>', page, re.S):
        name = re.search(r"<caption[^>]*>([^:<]+):", table)
        assert name is not None, table[:200]
        header = [html.unescape(h) for h in re.findall(r'<th scope="col">([^<]*)</th>', table)]
        cells = found.setdefault(name.group(1), {})
        for row in re.findall(r'<tr><th scope="row">(.*?)</tr>', table, re.S):
            number, _, rest = row.partition("</th>")
            for column, cell in zip(
                header[1:], re.findall(r"<td>(.*?)</td>", rest, re.S), strict=True
            ):
                status = re.search(r'class="status status-(\w+)"', cell)
                text = html.unescape(cell.split("<span", 1)[0]).strip()
                cells[(int(number), column)] = (text, status.group(1) if status else None)
    return found


def test_a_researcher_uploads_runs_asks_and_two_checkers_release_to_the_register(
    portal: Portal, definition: bytes
) -> None:
    lead = staff(portal, LEAD)
    uploaded = upload(lead, definition)
    assert uploaded.status_code == 303
    page_path = uploaded.headers["location"]
    page = lead.get(page_path).text
    assert "patients" in page and portal.built.agreement in page
    ran = post(lead, f"{page_path}/run", page_path, agreement=portal.built.agreement)
    assert ran.status_code == 303, ran.text
    run_path = ran.headers["location"]
    run_page = lead.get(run_path).text
    assert "table_adults_by_sex.csv" in run_page and "stay inside" in run_page
    asked = post(
        lead,
        f"{run_path}/request",
        run_path,
        files=["table_adults_by_sex.csv"],
        title="Adults by sex",
        description="A first look.",
    )
    assert asked.status_code == 303, asked.text
    request_ref = asked.headers["location"].rsplit("/", 1)[1]
    assert "awaiting review" in lead.get(asked.headers["location"]).text.lower()
    for checker in CHECKERS:
        browser = staff(portal, checker)
        assert request_ref in browser.get("/checking").text
        answer = post(
            browser,
            f"/checking/{request_ref}/review",
            f"/checking/{request_ref}",
            file="table_adults_by_sex.csv",
            decision="approve",
        )
        assert answer.status_code == 303, answer.text
    assert "is released" in browser.get(f"/checking/{request_ref}").text.lower()
    register = client(portal).get("/register").text
    assert "Adults by sex" in register
    link = re.search(r'href="(/register/releases/\d+/table_adults_by_sex\.csv)"', register)
    assert link is not None
    published = client(portal).get(link.group(1))
    assert published.status_code == 200 and "sex" in published.text


def test_a_patient_sees_which_approved_projects_used_their_record(
    portal: Portal, definition: bytes
) -> None:
    """After a run of the adults-only study, a patient it read sees the project with its
    register entry and the run; a child among the demo patients sees none; and the page holds
    nothing of the person but what they already know."""
    import pyarrow.parquet as pq

    from gpdpr.custodian.central import Custodian
    from gpdpr.transparency.patient import record_uses

    lead = staff(portal, LEAD)
    sha_path = upload(lead, definition).headers["location"]
    ran = post(lead, f"{sha_path}/run", sha_path, agreement=portal.built.agreement)
    assert ran.status_code == 303, ran.text
    run_reference = ran.headers["location"].rsplit("/", 1)[1]
    custodian = Custodian(portal.built.home / "keys", portal.built.engine)
    numbers = portal.built.nhs_numbers
    read = [
        n
        for n, number in enumerate(numbers, 1)
        if any(
            r.reference == run_reference
            for p in record_uses(
                custodian, custodian.pseudonym_for(number, "test", "expect"), portal.built.home
            ).projects
            for r in p.runs
        )
    ]
    practice = sorted(p for p in (portal.built.home / "practices").iterdir() if p.is_dir())[0]
    born = pq.read_table(practice / "patients.parquet", columns=["nhs_number", "date_of_birth"])
    births = dict(
        zip(born["nhs_number"].to_pylist(), born["date_of_birth"].to_pylist(), strict=True)
    )
    children = [n for n, number in enumerate(numbers, 1) if births[number] > date(2007, 1, 1)]
    assert read and children and not set(read) & set(children)

    shown = patient(portal, read[0]).get("/patient/record")
    assert shown.status_code == 200
    page = shown.text
    assert portal.built.agreement in page and run_reference in page
    entry = client(portal).get("/register").text
    title = re.search(
        rf'id="{portal.built.agreement}">\s*<h3>{portal.built.agreement}: ([^<]+)</h3>', entry
    )
    assert title is not None and title.group(1) in page
    assert numbers[read[0] - 1] not in page

    child = patient(portal, children[0]).get("/patient/record").text
    assert "No approved project's run has used your record" in child
    assert run_reference not in child


def test_a_checker_from_the_authors_organisation_never_sees_the_request(
    portal: Portal, tmp_path: Path
) -> None:
    lead = staff(portal, LEAD)
    # a table of its own: returned, these bytes can never be asked for again
    own = compiled(tmp_path, study("returned_one", 60))
    run_path = run_of(lead, portal, own)
    asked = post(
        lead, f"{run_path}/request", run_path, files=["table_returned_one.csv"], title="Again"
    )
    request_ref = asked.headers["location"].rsplit("/", 1)[1]
    same_org = staff(portal, BOTH)  # an output checker at the University of Leeds, like the author
    assert request_ref not in same_org.get("/checking").text
    assert same_org.get(f"/checking/{request_ref}").status_code == 404
    checker = staff(portal, CHECKERS[0])
    before = snapshot(portal.built.engine)
    refused = post(
        checker,
        f"/checking/{request_ref}/review",
        f"/checking/{request_ref}",
        file="table_returned_one.csv",
        decision="reject",
    )
    assert refused.status_code == 400 and "comment" in refused.text
    assert snapshot(portal.built.engine) == before
    returned = post(
        checker,
        f"/checking/{request_ref}/review",
        f"/checking/{request_ref}",
        file="table_returned_one.csv",
        decision="return",
        comment="Say what the table is for.",
    )
    assert returned.status_code == 303
    assert "Say what the table is for." in lead.get(asked.headers["location"]).text


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"not json at all", "not valid JSON"), (b'{"version": 99}', "cannot be accepted")],
)
def test_a_bad_definition_upload_is_refused_and_kept_nowhere(
    portal: Portal, body: bytes, message: str
) -> None:
    lead = staff(portal, LEAD)
    answer = upload(lead, body)
    assert answer.status_code == 400 and message in answer.text
    assert "cannot be accepted" in answer.text


def test_the_definition_page_shows_each_codelists_terms_beside_its_codes(
    portal: Portal, tmp_path: Path
) -> None:
    """Terms from the release in use, beside each code a definition matches; a valid code the
    release does not know is said to be so, and an ECL codelist names its expression."""
    (tmp_path / "htn.csv").write_text("code\n38341003\n59621000\n7654321003\n")
    study_text = STUDY.replace(
        "dataset.sex = patients.sex\n",
        'dataset.sex = patients.sex\nhtn = codelist_from_csv("htn.csv")\n'
        "dataset.htn = clinical_events.where(clinical_events.code.is_in(htn))"
        ".exists_for_patient()\n"
        "dataset.t2 = clinical_events.where(clinical_events.code.is_in("
        "codelist_from_ecl('<< 44054006 |Type 2 diabetes mellitus|'))).exists_for_patient()\n",
    )
    with pytest.warns(UserWarning, match="7654321003 is valid but not in the loaded"):
        document = compiled(tmp_path, study_text)
    lead = staff(portal, LEAD)
    page = html.unescape(lead.get(upload(lead, document).headers["location"]).text)
    assert "<h3>htn.csv</h3>" in page
    assert "<td><code>38341003</code></td><td>Hypertensive disorder" in page
    assert "<td><code>7654321003</code></td><td><em>not in the release in use</em>" in page
    assert "Expanded from <code><< 44054006 |Type 2 diabetes mellitus|</code>" in page
    assert "<td><code>44054006</code></td><td>Diabetes mellitus type 2" in page


def test_a_run_outside_any_agreement_of_the_researcher_is_refused(
    portal: Portal, definition: bytes
) -> None:
    vendor = staff(portal, VENDOR)
    page_path = upload(vendor, definition).headers["location"]
    answer = post(vendor, f"{page_path}/run", page_path, agreement=portal.built.agreement)
    assert answer.status_code == 400 and "not named on its team" in answer.text


def test_dummy_results_are_made_in_the_background_and_shown(
    portal: Portal, definition: bytes
) -> None:
    import time

    lead = staff(portal, LEAD)
    page_path = upload(lead, definition).headers["location"]
    started = post(lead, f"{page_path}/dummy", page_path)
    assert started.status_code == 303
    page = lead.get(page_path).text
    deadline = time.monotonic() + 300
    while "Working:" in page and time.monotonic() < deadline:
        assert 'http-equiv="refresh"' in page
        time.sleep(1)
        page = lead.get(page_path).text
    assert "table_adults_by_sex.csv" in page and "synthetic patients" in page, page


CANARY_RAW = 987_654_000
CANARY_KEY = "c0ffee" * 10 + "abcd"


def test_checkers_see_each_file_as_a_table_with_every_cells_status_and_a_measure_as_a_chart(
    portal: Portal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orjson

    from gpdpr.portal import outputs
    from gpdpr.tre.release.checking import CELL_STATUSES

    lead = staff(portal, LEAD)
    run_path = run_of(lead, portal, compiled(tmp_path, MEASURED))
    files = ["measure_any_event.csv", "table_over_30s_by_sex.csv"]
    request_ref = ask_for(lead, run_path, files, "Events by sex")
    folder = portal.built.home / "tre" / "runs" / run_path.rsplit("/", 1)[1]
    places = [
        (c["file"], c["row"], c["column"])
        for c in orjson.loads((folder / "cells.json").read_bytes())
        if c["file"] in files
    ]
    assert {f for f, _, _ in places} == set(files)
    checker = staff(portal, CHECKERS[0])
    # cells.json in the shape before statuses, and in the shape with them: each cell shows its
    # status where it is, and never its raw count, its key or its description
    shapes = {
        "before statuses": (
            [
                {"file": f, "row": r, "column": c, "dims": "CANARY-DIMS", "raw": CANARY_RAW + n,
                 "released": n % 2 == 0}
                for n, (f, r, c) in enumerate(places)
            ],
            ["published" if n % 2 == 0 else "redacted" for n in range(len(places))],
        ),
        "with statuses": (
            [
                {"file": f, "row": r, "column": c, "raw": CANARY_RAW + n, "key": CANARY_KEY,
                 "released": n % 4 < 2, "status": CELL_STATUSES[n % 4],
                 "reason": f"the reason for {CELL_STATUSES[n % 4]}"}
                for n, (f, r, c) in enumerate(places)
            ],
            [CELL_STATUSES[n % 4] for n in range(len(places))],
        ),
    }  # fmt: skip
    for shape, (entries, statuses) in shapes.items():
        (folder / "cells.json").write_bytes(orjson.dumps(entries))
        answer = checker.get(f"/checking/{request_ref}")
        assert answer.status_code == 200, shape
        page = answer.text
        tables = output_tables(page)
        assert sorted(tables) == files, shape
        for (file, row, column), status in zip(places, statuses, strict=True):
            assert tables[file][(row, column)][1] == status, (shape, file, row, column)
        for canary in (str(CANARY_RAW)[:6], CANARY_KEY[:12], "CANARY-DIMS"):
            assert canary not in page, (shape, canary)
    assert "Redacted: the reason for redacted" in page and "Rounded: the reason for rounded" in page
    # the published values are the file's own, and the measure (only) has its chart
    header, *body = csv_rows(folder / "outputs" / "table_over_30s_by_sex.csv")
    for number, line in enumerate(body, 1):
        for column, value in zip(header, line, strict=True):
            assert tables["table_over_30s_by_sex.csv"][(number, column)][0] == value
    assert page.count("<svg") == 2 and "measure_any_event.csv: rate per interval" in page
    assert 'class="scroll" role="region" tabindex="0"' in page  # scrolls inside, on a phone too

    # a long file is shown a page at a time, each file paged on its own
    monkeypatch.setattr(outputs, "PAGE_ROWS", 5)
    first = output_tables(checker.get(f"/checking/{request_ref}").text)
    second = output_tables(
        checker.get(f"/checking/{request_ref}?file=measure_any_event.csv&page=2").text
    )
    assert {r for r, _ in first["measure_any_event.csv"]} == {1, 2, 3, 4, 5}
    assert {r for r, _ in second["measure_any_event.csv"]} == {6, 7, 8, 9, 10}
    assert {r for r, _ in second["table_over_30s_by_sex.csv"]} == {
        r for r, _ in first["table_over_30s_by_sex.csv"]
    }
    bad = checker.get(f"/checking/{request_ref}?file=measure_any_event.csv&page=x")
    assert bad.status_code == 200 and 1 in {r for r, _ in output_tables(bad.text)[files[0]]}

    # a file changed since it was asked for is not shown as if it were the one asked for
    (folder / "outputs" / "table_over_30s_by_sex.csv").write_text("sex,patients\nF,1\n")
    page = checker.get(f"/checking/{request_ref}").text
    assert "changed after it was asked for" in page
    assert "table_over_30s_by_sex.csv" not in output_tables(page)


def test_a_checker_from_the_projects_funder_never_sees_or_reviews_its_outputs(
    portal: Portal, tmp_path: Path
) -> None:
    from governing import CHARITY

    add_checker(portal, "k.funder", CHARITY)  # the demo application's funder
    lead = staff(portal, LEAD)
    run_path = run_of(lead, portal, compiled(tmp_path, study("funded", 25)))
    request_ref = ask_for(lead, run_path, ["table_funded.csv"], "Funded")
    funder = staff(portal, "k.funder")
    assert request_ref not in funder.get("/checking").text
    assert funder.get(f"/checking/{request_ref}").status_code == 404
    before = snapshot(portal.built.engine)
    answer = post(
        funder,
        f"/checking/{request_ref}/review",
        "/checking",
        file="table_funded.csv",
        decision="approve",
    )
    assert answer.status_code == 404
    assert snapshot(portal.built.engine) == before
    assert request_ref in staff(portal, CHECKERS[1]).get("/checking").text


def test_a_rejected_file_cannot_be_asked_for_again_unchanged(
    portal: Portal, tmp_path: Path
) -> None:
    lead = staff(portal, LEAD)
    document = compiled(tmp_path, study("rejected_one", 35))
    first = ask_for(lead, run_of(lead, portal, document), ["table_rejected_one.csv"], "First")
    rejected = post(
        staff(portal, CHECKERS[0]),
        f"/checking/{first}/review",
        f"/checking/{first}",
        file="table_rejected_one.csv",
        decision="reject",
        comment="The groups are too small.",
    )
    assert rejected.status_code == 303
    again = run_of(lead, portal, document)  # the same definition on the same data: same bytes
    lead.get(again)  # seen once (what is shown is remembered), so the refusal changes nothing
    before = snapshot(portal.built.engine)
    answer = post(lead, f"{again}/request", again, files=["table_rejected_one.csv"], title="Second")
    assert answer.status_code == 400
    text = html.unescape(answer.text)
    assert f"table_rejected_one.csv is, byte for byte, a file that was rejected in {first}" in text
    assert "change the definition, run it again" in text
    assert snapshot(portal.built.engine) == before


def test_the_register_serves_only_the_files_a_release_lists_by_their_names_there(
    portal: Portal, tmp_path: Path
) -> None:
    lead = staff(portal, LEAD)
    request_ref = ask_for(
        lead,
        run_of(lead, portal, compiled(tmp_path, study("served", 40))),
        ["table_served.csv"],
        "Served",
    )
    for checker in CHECKERS:
        answer = post(
            staff(portal, checker),
            f"/checking/{request_ref}/review",
            f"/checking/{request_ref}",
            file="table_served.csv",
            decision="approve",
        )
        assert answer.status_code == 303, answer.text
    register = client(portal).get("/register").text
    link = re.search(r'href="/register/releases/(\d+)/table_served\.csv"', register)
    assert link is not None
    release = link.group(1)
    folder = portal.built.home / "register" / "releases" / release
    browser = client(portal)
    served = browser.get(f"/register/releases/{release}/table_served.csv")
    assert served.status_code == 200
    assert served.content == (folder / "table_served.csv").read_bytes()
    assert "attachment" in served.headers["content-disposition"]
    definition = browser.get(f"/register/releases/{release}/definition.json")
    assert definition.status_code == 200
    assert definition.content == (folder / "definition.json").read_bytes()
    # a file planted in the release's folder is not the release's: never served
    (folder / "planted.csv").write_text("nhs_number\n9434765919\n")
    (folder / "planted.json").write_text("{}")
    for name in ("planted.csv", "planted.json", "..%2Fplanted.csv", "TABLE_SERVED.CSV"):
        assert browser.get(f"/register/releases/{release}/{name}").status_code == 404, name
    # nor a listed file changed after it was released
    (folder / "table_served.csv").write_text("sex,patients\nF,3\n")
    assert browser.get(f"/register/releases/{release}/table_served.csv").status_code == 404
    for path in (f"/register/releases/{2**40}/x.csv", "/register/releases/-1/definition.json"):
        assert browser.get(path).status_code == 404, path


def test_a_run_page_shows_the_controlled_outputs_and_nothing_else_about_the_data(
    portal: Portal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpdpr.portal import research

    lead = staff(portal, LEAD)
    run_path = run_of(lead, portal, compiled(tmp_path, study("shown_inside", 45)))
    page = lead.get(run_path).text
    folder = portal.built.home / "tre" / "runs" / run_path.rsplit("/", 1)[1] / "outputs"
    header, *body = csv_rows(folder / "table_shown_inside.csv")
    shown = output_tables(page)["table_shown_inside.csv"]
    assert {(n, c): v for (n, c), (v, _) in shown.items()} == {
        (n, c): v for n, line in enumerate(body, 1) for c, v in zip(header, line, strict=True)
    }
    assert "bytes" not in page and "status-" not in page  # no sizes; statuses are the checkers'
    # a file the differencing guard withholds is named as withheld, and nothing of it shown
    monkeypatch.setattr(research, "visible_outputs", lambda *_: {"table_shown_inside.csv": None})
    page = lead.get(run_path).text
    assert "Withheld: it could be subtracted from results you have seen (differencing risk)" in page
    assert output_tables(page) == {}
    # whatever a file holds is text on the page, never markup
    hostile = b'"<b>x</b>",patients\n"<script>alert(1)</script>",10\n'
    monkeypatch.setattr(research, "visible_outputs", lambda *_: {"table_shown_inside.csv": hostile})
    page = lead.get(run_path).text
    assert "<script>alert" not in page and "<b>x" not in page
    assert output_tables(page)["table_shown_inside.csv"][(1, "<b>x</b>")][0] == (
        "<script>alert(1)</script>"
    )


def test_a_real_run_that_stops_inside_says_so_without_saying_why(
    portal: Portal, definition: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why a real run stopped can be a fact about the data (an empty population, an overflow on
    one person's value): neither the answer to the run nor its page nor the list of runs says it.
    A refusal by the agreement, which is no such fact, is shown (see
    test_a_run_outside_any_agreement_of_the_researcher_is_refused)."""
    from gpdpr.tre.engines.duckdb import DuckDBEngine
    from gpdpr.tre.release import checking

    def fail(*_: object) -> None:
        raise UserError("CANARY: one person's value overflowed")

    lead = staff(portal, LEAD)
    page_path = upload(lead, definition).headers["location"]
    monkeypatch.setattr(DuckDBEngine, "run", fail)
    answer = post(lead, f"{page_path}/run", page_path, agreement=portal.built.agreement)
    assert answer.status_code == 400
    assert "stopped inside the research environment and made no outputs" in answer.text
    assert "CANARY" not in answer.text
    # however the run was recorded, its page and the list give its status, never its message
    with Session(portal.built.engine) as session, session.begin():
        stopped = checking.record_run(
            session, LEAD, portal.built.agreement, definition.decode(),
            hashlib.sha256(definition).hexdigest(), 1, "duckdb", "round5", "refused",
            "the population is empty: CANARY", {}, datetime.now(UTC), None,
        ).reference  # fmt: skip
    run_page = lead.get(f"/research/runs/{stopped}").text
    assert "Refused: it made no outputs" in run_page
    overview = lead.get("/research").text
    assert stopped in overview
    for page in (run_page, overview):
        assert "CANARY" not in page and "empty" not in page


def test_a_dummy_run_that_fails_in_the_engine_shows_none_of_the_engines_text(
    portal: Portal, definition: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from gpdpr.tre.engines.duckdb import DuckDBEngine

    lead = staff(portal, LEAD)
    page_path = upload(lead, definition).headers["location"]
    for error in (UserError("CANARY: the lake's rows"), RuntimeError("CANARY: the key")):

        def fail(*_: object, error: Exception = error) -> None:
            raise error

        monkeypatch.setattr(DuckDBEngine, "run", fail)
        assert post(lead, f"{page_path}/dummy", page_path).status_code == 303
        page = lead.get(page_path).text
        deadline = time.monotonic() + 300
        while "Working:" in page and time.monotonic() < deadline:
            time.sleep(1)
            page = lead.get(page_path).text
        assert "The dummy run failed: the engine stopped on this definition" in page, page
        assert "CANARY" not in page


# ---- the role x route x own/other-object matrix ----------------------------------------------

ANONYMOUS = "anonymous"
WHO = (ANONYMOUS, "patient", LEAD, VENDOR, PANEL[0], CHECKERS[0], ADMIN)


def browser_for(portal: Portal, who: str) -> TestClient:
    if who == ANONYMOUS:
        return client(portal)
    if who == "patient":
        return patient(portal, 5)
    return staff(portal, who)


def test_every_page_answers_only_whom_it_should(portal: Portal, only_leads: bytes) -> None:
    """Each role on each page, with objects that are theirs and objects that are someone
    else's: 200 where entitled, 404 for another's object (as for one that does not exist),
    403 for the wrong role, and a redirect to sign in for nobody."""
    from governing import bring_to, new_draft

    draft = new_draft(portal.built.engine)  # LEAD's, never submitted
    submitted = bring_to(portal.built.engine, "submitted")
    lead = staff(portal, LEAD)
    sha_path = upload(lead, only_leads).headers["location"]
    run_path = post(lead, f"{sha_path}/run", sha_path, agreement=portal.built.agreement).headers[
        "location"
    ]
    request_path = post(
        lead, f"{run_path}/request", run_path, files=["table_matrix.csv"], title="Matrix"
    ).headers["location"]
    request_ref = request_path.rsplit("/", 1)[1]
    ok, no, gone, out = 200, 403, 404, 303
    expected: dict[str, dict[str, int]] = {
        "/patient": {"patient": ok},
        "/patient/record": {"patient": ok},
        "/applications": {LEAD: ok, VENDOR: ok},
        f"/applications/{draft}": {LEAD: ok, VENDOR: gone, PANEL[0]: gone, ADMIN: gone},
        f"/applications/{submitted}": {LEAD: ok, VENDOR: gone, PANEL[0]: ok, ADMIN: ok},
        f"/applications/{draft}/edit": {LEAD: ok, VENDOR: gone},
        "/applications/APP-2099-9999": {LEAD: gone, VENDOR: gone, PANEL[0]: gone, ADMIN: gone},
        "/panel": {PANEL[0]: ok, ADMIN: ok},
        "/research": {LEAD: ok, VENDOR: ok},
        sha_path: {LEAD: ok, VENDOR: gone},
        run_path: {LEAD: ok, VENDOR: gone},
        request_path: {LEAD: ok, VENDOR: gone},
        "/checking": {CHECKERS[0]: ok},
        f"/checking/{request_ref}": {CHECKERS[0]: ok},
        "/checking/REQ-999999": {CHECKERS[0]: gone},
        "/admin": {ADMIN: ok},
    }
    browsers = {who: browser_for(portal, who) for who in WHO}
    wrong: list[str] = []
    for path, allowed in expected.items():
        for who, browser in browsers.items():
            want = allowed.get(who, out if who == ANONYMOUS else no)
            got = browser.get(path).status_code
            if got != want:
                wrong.append(f"{who} GET {path}: {got}, expected {want}")
    assert wrong == []
    # and the actions, as someone else: refused before anything changes
    before = snapshot(portal.built.engine)
    vendor = browsers[VENDOR]
    for path in (
        f"/applications/{draft}/submit",
        f"/applications/{draft}/withdraw",
        f"{run_path}/request",
    ):
        assert post(vendor, path, "/research").status_code == 404, path
    assert post(browsers[PANEL[0]], f"/panel/{submitted}/start-review", "/panel").status_code == 403
    assert post(browsers[LEAD], f"/checking/{request_ref}/review", "/research").status_code == 403
    assert (
        post(
            browsers["patient"], "/admin/organisations", "/patient", name="X", kind="charity"
        ).status_code
        == 403
    )
    assert snapshot(portal.built.engine) == before


# ---- the commands ------------------------------------------------------------------------------


def test_gpdpr_portal_password_sets_a_password_that_signs_in(portal: Portal) -> None:
    from typer.testing import CliRunner

    from gpdpr.cli import app

    home = str(portal.built.home)
    new = "a brand new password"
    done = CliRunner().invoke(
        app, ["portal", "password", VENDOR, "--home", home], input=f"{new}\n{new}\n"
    )
    assert done.exit_code == 0, done.output
    browser = client(portal)
    page = browser.get("/sign-in")
    answer = browser.post(
        "/sign-in", data={"handle": VENDOR, "password": new, "csrf_token": token_of(page.text)}
    )
    assert answer.status_code == 303
    short = CliRunner().invoke(
        app, ["portal", "password", VENDOR, "--home", home], input="short\nshort\n"
    )
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    unknown = CliRunner().invoke(
        app, ["portal", "password", "no.one", "--home", home], input=f"{new}\n{new}\n"
    )
    assert unknown.exit_code == 2 and "no one has the handle" in unknown.output


def test_gpdpr_portal_serve_refuses_a_missing_home(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gpdpr.cli import app

    done = CliRunner().invoke(app, ["portal", "serve", "--home", str(tmp_path / "nowhere")])
    assert done.exit_code == 2 and "no service home" in done.output


# ---- more of each role's forms -------------------------------------------------------------------


def test_a_draft_is_edited_withdrawn_and_then_cannot_be_edited(portal: Portal) -> None:
    lead = staff(portal, LEAD)
    reference = apply(lead).headers["location"].rsplit("/", 1)[1]
    edit = f"/applications/{reference}/edit"
    assert "Asthma reviews by deprivation" in lead.get(edit).text
    saved = post(lead, edit, edit, **{**APPLICATION, "title": "Asthma reviews, revised"})
    assert saved.status_code == 303
    assert "Asthma reviews, revised" in lead.get(f"/applications/{reference}").text
    gone = post(
        lead, f"/applications/{reference}/withdraw", f"/applications/{reference}", reason="Merged"
    )
    assert gone.status_code == 303
    assert "is withdrawn" in lead.get(f"/applications/{reference}").text
    assert lead.get(edit).status_code == 404  # only a draft has an edit page
    before = snapshot(portal.built.engine)
    refused = lead.post(
        edit, data={**APPLICATION, "csrf_token": token_of(lead.get("/research").text)}
    )
    assert refused.status_code == 400 and "cannot edit" in refused.text
    assert snapshot(portal.built.engine) == before


def test_a_panel_member_declares_a_conflict_and_their_vote_stops_counting(portal: Portal) -> None:
    from governing import bring_to

    reference = bring_to(portal.built.engine, "under_review")
    member = staff(portal, PANEL[1])
    post(member, f"/panel/{reference}/vote", f"/applications/{reference}", vote="refuse")
    declared = post(
        member,
        f"/panel/{reference}/conflict",
        f"/applications/{reference}",
        reason="I advised them",
    )
    assert declared.status_code == 303
    page = staff(portal, ADMIN).get(f"/applications/{reference}").text
    assert "I advised them" in page and "0 counted votes" in page
    empty = post(member, f"/panel/{reference}/conflict", f"/applications/{reference}", reason="")
    assert empty.status_code == 400


def test_the_administrator_adds_a_person_who_can_then_sign_in(portal: Portal) -> None:
    admin = staff(portal, ADMIN)
    added = post(
        admin,
        "/admin/people",
        "/admin",
        handle="q.checker",
        name="Quinn Checker",
        email="q@example.org",
        roles=["output_checker"],
        password="quinn's long password",
    )
    assert added.status_code == 303, added.text
    browser = client(portal)
    page = browser.get("/sign-in")
    answer = browser.post(
        "/sign-in",
        data={
            "handle": "q.checker",
            "password": "quinn's long password",
            "csrf_token": token_of(page.text),
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/checking"


def test_signing_in_never_redirects_off_the_site(portal: Portal) -> None:
    browser = client(portal)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        page = browser.get("/sign-in", params={"next": target})
        answer = browser.post(
            "/sign-in",
            data={
                "handle": LEAD,
                "password": PASSWORD,
                "next": target,
                "csrf_token": token_of(page.text),
            },
        )
        assert answer.headers["location"] == "/applications"
        post(browser, "/sign-out", "/applications")
    assert client(portal).get("/research").headers["location"] == "/sign-in?next=%2Fresearch"


def test_pages_carry_the_security_headers(portal: Portal) -> None:
    answer = client(portal).get("/")
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert "strict-transport-security" in client(portal, https=True).get("/").headers


def test_a_published_file_is_never_a_path_from_the_request(portal: Portal) -> None:
    browser = client(portal)
    for path in (
        "/register/releases/1/..%2F..%2Fcentral.db",
        "/register/releases/1/.hidden",
        "/register/releases/0/definition.json",
        "/register/releases/999/definition.json",
    ):
        assert browser.get(path).status_code == 404, path


def test_the_demo_accounts_sign_in_as_staff_and_as_patients(tmp_path: Path) -> None:
    from gpdpr.portal.serve import DEMO_PASSWORD, prepare_demo

    with database("sqlite"):
        built = build(tmp_path, patients=0)
        made = prepare_demo(built.home)
        patients = [a for a in made if a.roles == ("patient",)]
        assert len(patients) == 3 and {a.who for a in made} >= {LEAD, ADMIN, *PANEL, *CHECKERS}
        app = create_app(built.home)
        demo = Portal(built, app)
        admin = client(demo)
        page = admin.get("/sign-in")
        answer = admin.post(
            "/sign-in",
            data={"handle": ADMIN, "password": DEMO_PASSWORD, "csrf_token": token_of(page.text)},
        )
        assert answer.status_code == 303
        assert app.state.idp.check_password(patients[0].who, DEMO_PASSWORD)
        app.state.portal.close()
        built.engine.dispose()


def test_every_other_form_refuses_bad_input_with_the_reason_and_changes_nothing(
    portal: Portal, definition: bytes
) -> None:
    from governing import bring_to, new_draft

    engine = portal.built.engine
    lead, admin, member = staff(portal, LEAD), staff(portal, ADMIN), staff(portal, PANEL[0])
    incomplete = new_draft(engine, lay_summary="", items=())
    reviewing = bring_to(engine, "under_review")
    sha_path = upload(lead, definition).headers["location"]
    run_path = post(lead, f"{sha_path}/run", sha_path, agreement=portal.built.agreement).headers[
        "location"
    ]
    lead.get(run_path)  # its outputs seen once: what is shown is remembered, once
    cases: list[tuple[TestClient, str, dict[str, object], str]] = [
        (lead, f"/applications/{incomplete}/submit", {}, "stays a draft"),
        (member, f"/panel/{reviewing}/vote", {}, "approve or refuse"),
        (member, f"/panel/{reviewing}/vote", {"vote": "maybe"}, "approve or refuse"),
        (admin, f"/panel/{reviewing}/decide", {"minutes": "Early."}, "cannot decide"),
        (admin, f"/panel/{reviewing}/agreement", {}, "cannot issue"),
        (admin, "/admin/passwords", {"handle": "no.one", "password": "long enough pw"}, "no one"),
        (lead, f"{run_path}/request", {"title": "Nothing chosen"}, "at least one output"),
        (lead, f"{run_path}/request", {"files": ["table_adults_by_sex.csv"]}, "needs a title"),
        (lead, f"{run_path}/request", {"files": ["../cells.json"], "title": "x"}, "no output"),
        (lead, f"{sha_path}/run", {"agreement": "DSA-2099-9999"}, "no agreement"),
    ]
    for browser, path, form, message in cases:
        before = snapshot(engine)
        answer = post(browser, path, "/", **form)
        text = answer.text.replace("&#39;", "'")
        assert answer.status_code == 400 and message in text, (path, form, text[-600:])
        assert "Nothing was changed" in text
        assert snapshot(engine) == before, (path, form)


def test_what_the_portal_records_is_published_to_the_transparency_log(portal: Portal) -> None:
    from gpdpr.portal.serve import publish_now
    from gpdpr.transparency import store
    from gpdpr.transparency.publish import log_folder

    lead = staff(portal, LEAD)
    reference = apply(lead).headers["location"].rsplit("/", 1)[1]
    post(lead, f"/applications/{reference}/submit", f"/applications/{reference}")
    publish_now(portal.app)
    with portal.built.engine.connect() as connection:
        waiting = connection.scalar(
            sa.select(sa.func.count())
            .select_from(Event)
            .where(Event.log_seq.is_(None), Event.kind == "application.submitted")
        )
    assert waiting == 0
    contents = store.read(log_folder(portal.built.home))
    assert reference.encode() in contents.data and contents.checkpoint is not None


def test_a_chart_has_whole_number_ticks_a_legend_line_per_series_and_its_figures_in_words() -> None:
    from gpdpr.portal.charts import Series, bars

    for values, top in (([1, 2], "4"), ([3, 47], "50"), ([0, 999], "1,000")):
        svg = bars("Chart", ["a", "b"], [Series("one", values), Series("two", [0, 1])])
        ticks = re.findall(r'text-anchor="end" font-size="11" fill="#212b32">([^<]+)<', svg)
        assert all(t.replace(",", "").isdigit() for t in ticks) and ticks[-1] == top, ticks
        assert "one, a: " in svg and "two: a 0, b 1" in svg  # the figures as text
        legend = re.findall(r'<text x="66" y="(\d+)"', svg)
        assert len(legend) == 2 and legend[0] != legend[1]  # one line each, not overlapping
    assert "Nothing yet" in bars("Empty", [], [Series("none", [])])


def test_a_rate_chart_breaks_its_line_where_nothing_was_published_and_says_so_in_words() -> None:
    from gpdpr.portal.charts import Rates, lines

    svg = lines(
        "Rates",
        ["2024-01", "2024-02", "2024-03", "2024-04"],
        [Rates("F", [0.1, None, 0.25, 0.3]), Rates("M", [0.05, 0.06, 0.07, 0.08])],
    )
    assert svg.count("<polyline") == 3  # F in two pieces around its gap, M in one
    assert svg.count("<circle") == 7  # a point per published rate, none for the gap
    assert "F: 2024-01 10%, 2024-02 not published, 2024-03 25%, 2024-04 30%" in svg
    ticks = re.findall(r'text-anchor="end" font-size="11" fill="#212b32">([^<]+)<', svg)
    assert ticks[0] == "0%" and ticks[-1] == "50%", ticks  # the axis tops the highest rate
    assert "Nothing yet" in lines("Empty", [], [])
