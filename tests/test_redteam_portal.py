"""Red team, through the portal (issue 17): the issue's first finding, replayed. A signed-in
applicant with no agreement at all uploads a definition whose names carry SQL and presses "run on
dummy data"; the SQL copies the collection key and the real lake's diagnoses into a release
folder of the public register, which anyone then downloads. Also the same definitions run for
real by the project's lead, and the same downloads tried.

What must hold: the upload is refused, or the dummy (or real) run is refused or harmless;
nothing is written outside the portal's own folders and the run's; no file the attack aimed at
can be downloaded; no canary is in any page the portal answers with, any new file or the
database. (The portal's dummy runs use DuckDB, its default engine; the same attacks on both
engines from the command line are in test_redteam_injection.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from governing import LEAD, VENDOR
from gpdpr.portal.app import create_app
from gpdpr.portal.security import RateLimit
from portal_home import FAST, PASSWORD
from redteam import Injection, Outcome, World, assert_harmless, injections, the_world

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ATTACKS = (
    "variable-duckdb-copy",
    "variable-duckdb-attach",
    "variable-duckdb-error",
    "variable-duckdb-lake",
    "group-duckdb-copy",
    "group-duckdb-error",
    "table-path",
    "value-quote",
    "code-quote",
)
POLL_SECONDS = 300  # a safety net for a background job that never ends, not a measurement


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


@pytest.fixture(scope="module")
def portal(world: World) -> Iterator[FastAPI]:
    app = create_app(world.home, passwords=FAST, rate_limit=RateLimit(), dummy_patients=100)
    yield app
    app.state.portal.close()


def signed_in(app: FastAPI, handle: str) -> TestClient:
    app.state.portal.rate_limit.clear(app.state.portal.engine)
    # A server error is answered as a page (a 500), as a real server would, not raised here.
    browser = TestClient(app, follow_redirects=False, raise_server_exceptions=False)
    page = browser.get("/sign-in")
    answer = browser.post(
        "/sign-in",
        data={"handle": handle, "password": PASSWORD, "csrf_token": token(page.text)},
    )
    assert answer.status_code == 303, answer.text
    return browser


def token(page: str) -> str:
    found = CSRF.search(page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class Visit:
    """A browser and every page it was shown, to scan for canaries."""

    def __init__(self, browser: TestClient) -> None:
        self.browser = browser
        self.pages: list[str] = []

    def get(self, path: str) -> str:
        answer: httpx.Response = self.browser.get(path)
        self.pages.append(answer.text)
        return answer.text

    def post(self, path: str, form_page: str, **data: object) -> tuple[int, str, str]:
        """(status, location, page) of a form's POST, with the CSRF token of `form_page`."""
        csrf = token(self.get(form_page))
        answer: httpx.Response = self.browser.post(path, data={**data, "csrf_token": csrf})
        self.pages.append(answer.text)
        return answer.status_code, answer.headers.get("location", ""), answer.text

    def upload(self, document: bytes) -> tuple[int, str]:
        csrf = token(self.get("/research"))
        answer: httpx.Response = self.browser.post(
            "/research/definitions",
            data={"csrf_token": csrf},
            files={"definition": ("study.json", document, "application/json")},
        )
        self.pages.append(answer.text)
        return answer.status_code, answer.headers.get("location", "")

    def outcome(self) -> Outcome:
        """Everything shown, as one text to scan."""
        return Outcome(0, "\n".join(self.pages))


def downloads(app: FastAPI, injection: Injection, world: World) -> list[str]:
    """The files the attack aimed at in a release folder, as anyone can ask for them."""
    anyone = TestClient(app, follow_redirects=False)
    assert world.published is not None
    found = []
    for path in injection.targets:
        if path.parent == world.published:
            answer = anyone.get(f"/register/releases/{path.parent.name}/{path.name}")
            if answer.status_code != 404:
                found.append(f"{path.name}: {answer.status_code} {answer.text[:200]!r}")
    return found


def wait_for_dummy(visit: Visit, page_path: str) -> str:
    page = visit.get(page_path)
    deadline = time.monotonic() + POLL_SECONDS
    while "Working:" in page and time.monotonic() < deadline:
        time.sleep(0.5)
        page = visit.get(page_path)
    assert "Working:" not in page, f"the dummy run did not end in {POLL_SECONDS} s"
    return page


@pytest.mark.parametrize("name", ATTACKS)
def test_an_applicant_with_no_agreement_running_a_hostile_definition_on_dummy_data_reaches_nothing(
    world: World, portal: FastAPI, name: str
) -> None:
    """VENDOR (an applicant on no project) uploads the hostile definition and presses "run on
    dummy data": the upload is refused, or the dummy run is refused or harmless; the files the
    SQL aimed at (in a public release folder, in /tmp) do not exist and cannot be downloaded."""
    injection = injections(world)[name]
    injection.clear()
    before = world.state()
    visit = Visit(signed_in(portal, VENDOR))
    uploaded, location = visit.upload(injection.document)
    if uploaded == 303:
        visit.post(f"{location}/dummy", location)
        wait_for_dummy(visit, location)
    assert downloads(portal, injection, world) == []
    assert_harmless(world, visit.outcome(), before, injection.targets)
    assert uploaded in (303, 400), visit.pages[-1][:2000]


@pytest.mark.parametrize("name", ATTACKS)
def test_a_hostile_definition_run_for_real_from_the_portal_reaches_nothing(
    world: World, portal: FastAPI, name: str
) -> None:
    """The project's lead uploads the hostile definition and runs it under their agreement:
    refused (upload or run) or harmless, and nothing to download."""
    injection = injections(world)[name]
    injection.clear()
    before = world.state()
    visit = Visit(signed_in(portal, LEAD))
    status, location = visit.upload(injection.document)
    if status == 303:
        status, _, _ = visit.post(f"{location}/run", location, agreement=world.agreement)
    assert downloads(portal, injection, world) == []
    assert_harmless(world, visit.outcome(), before, injection.targets)
    assert status in (303, 400), f"answered {status}:\n{visit.pages[-1][:2000]}"
