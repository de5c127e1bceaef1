"""Sessions and sign-in limits that survive and scale, on each database: the limit holds for
guesses sent all at once (counted before the password is checked), a restarted portal keeps its
sessions, a password reset ends the person's sessions, X-Forwarded-For is believed only from a
configured proxy, and staff enrol and use a second factor (TOTP)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from databases import BACKENDS
from governing import ADMIN, COLLEAGUE, LEAD, PANEL
from gpdpr.portal.app import create_app
from gpdpr.portal.security import COOKIE, RateLimit, client_address, trusted_proxies
from gpdpr.portal.serve import free_port, running
from portal_home import FAST, PASSWORD, database
from portal_small import CountingPasswords, Small, small_home

# Seconds a request may take: generous, so that a machine loaded by other work (a CPU hog
# beside the suite, scripts/busy-suite) slows the test without failing it.
LOADED = 600

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
GUESSES = 80


@pytest.fixture(scope="module", params=BACKENDS)
def small(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Small]:
    with database(request.param):
        home = small_home(tmp_path_factory.mktemp(f"sessions-{request.param}"))
        passwords = CountingPasswords()
        app = create_app(home, passwords=passwords, rate_limit=RateLimit())
        yield Small(home, app, passwords)
        app.state.portal.close()


def browser(small: Small) -> TestClient:
    small.app.state.portal.rate_limit.clear(small.app.state.portal.engine)
    return TestClient(small.app, follow_redirects=False)


def token(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no form with a CSRF token"
    return found.group(1)


def sign_in(client: TestClient | httpx.Client, handle: str, password: str = PASSWORD) -> int:
    page = client.get("/sign-in")
    answer = client.post(
        "/sign-in", data={"handle": handle, "password": password, "csrf_token": token(page.text)}
    )
    return answer.status_code


def test_simultaneous_wrong_passwords_are_checked_only_up_to_the_limit(small: Small) -> None:
    """80 guesses for one account sent at the same instant, to a real server: 5 are checked
    (and refused as wrong), the other 75 are refused unchecked, and so is the right password
    straight after."""
    small.app.state.portal.rate_limit.clear(small.app.state.portal.engine)
    with running(small.app) as url:
        clients = [httpx.Client(base_url=url, timeout=120) for _ in range(GUESSES)]
        try:
            tokens = [token(c.get("/sign-in").text) for c in clients]
            small.passwords.checked = 0
            gate = threading.Barrier(GUESSES, timeout=120)

            def guess(n: int) -> int:
                gate.wait()
                return (
                    clients[n]
                    .post(
                        "/sign-in",
                        data={"handle": LEAD, "password": f"wrong {n}", "csrf_token": tokens[n]},
                    )
                    .status_code
                )

            with ThreadPoolExecutor(GUESSES) as pool:
                answers = Counter(pool.map(guess, range(GUESSES)))
            assert answers == Counter({400: 5, 429: GUESSES - 5})
            assert small.passwords.checked == 5
            assert sign_in(clients[0], LEAD) == 429
        finally:
            for c in clients:
                c.close()
    small.app.state.portal.rate_limit.clear(small.app.state.portal.engine)
    assert sign_in(browser(small), LEAD) == 303  # the counts are all there was


def test_a_success_is_not_counted_as_a_failure(small: Small) -> None:
    client = browser(small)
    for _ in range(10):
        assert sign_in(client, COLLEAGUE) == 303
        client.post("/sign-out", data={"csrf_token": token(client.get("/").text)})
    for _ in range(4):
        assert sign_in(client, COLLEAGUE, "wrong!") == 400
    assert sign_in(client, COLLEAGUE) == 303


def test_a_password_reset_ends_every_session_of_that_person(small: Small) -> None:
    lead = browser(small)
    assert sign_in(lead, LEAD) == 303
    other_lead = TestClient(small.app, follow_redirects=False)
    assert sign_in(other_lead, LEAD) == 303
    colleague = TestClient(small.app, follow_redirects=False)
    assert sign_in(colleague, COLLEAGUE) == 303
    admin = TestClient(small.app, follow_redirects=False)
    assert sign_in(admin, ADMIN) == 303
    assert lead.get("/applications").status_code == 200
    page = admin.get("/admin")
    done = admin.post(
        "/admin/passwords",
        data={"handle": LEAD, "password": PASSWORD, "csrf_token": token(page.text)},
    )
    assert done.status_code == 303
    for ended in (lead, other_lead):
        assert ended.get("/applications").headers["location"].startswith("/sign-in")
    assert colleague.get("/applications").status_code == 200  # nobody else's


def test_a_change_of_roles_ends_that_persons_sessions(small: Small) -> None:
    from gpdpr.governance.models import Person, PersonRole

    client = browser(small)
    assert sign_in(client, PANEL[1]) == 303
    assert client.get("/panel").status_code == 200
    engine = small.app.state.portal.engine
    with engine.begin() as connection:
        person = connection.execute(sa.select(Person.id).where(Person.handle == PANEL[1])).scalar()
        connection.execute(sa.insert(PersonRole).values(person_id=person, role="output_checker"))
    assert client.get("/panel").headers["location"].startswith("/sign-in")
    assert sign_in(client, PANEL[1]) == 303  # signed in again, with the roles as they are now
    assert client.get("/checking").status_code == 200


def test_sessions_nobody_signed_in_to_are_kept_only_so_many(small: Small) -> None:
    from gpdpr.portal.security import Sessions

    sessions = Sessions(small.app.state.portal.engine)
    sessions.MAX_ANONYMOUS = 3
    signed_in = browser(small)
    assert sign_in(signed_in, LEAD) == 303
    made = [sessions.new() for _ in range(6)]
    sessions.purge()
    kept = [s for s in made if sessions.get(s.id) is not None]
    assert len(kept) <= 3 and made[-1] in kept
    assert signed_in.get("/applications").status_code == 200  # a signed-in one is never cut


def test_the_database_holds_no_session_cookie_value(small: Small) -> None:
    client = browser(small)
    assert sign_in(client, LEAD) == 303
    value = client.cookies[COOKIE]
    with small.app.state.portal.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM portal_sessions").all()
    assert rows and not any(value in repr(row) for row in rows)


def enrol(small: Small, handle: str) -> pyotp.TOTP:
    """Sign `handle` in, enrol a second factor through the pages, and return it."""
    client = browser(small)
    assert sign_in(client, handle) == 303
    page = client.get("/account/second-factor")
    secret = re.search(r"<code>([A-Z2-7]{16,})</code>", page.text)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    done = client.post(
        "/account/second-factor", data={"code": totp.now(), "csrf_token": token(page.text)}
    )
    assert done.status_code == 303
    return totp


def test_a_staff_member_enrols_a_second_factor_and_then_needs_its_code(small: Small) -> None:
    client = browser(small)
    assert sign_in(client, COLLEAGUE) == 303
    page = client.get("/account/second-factor")
    assert page.status_code == 200
    secret = re.search(r"<code>([A-Z2-7]{16,})</code>", page.text)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    wrong = client.post(
        "/account/second-factor", data={"code": "000000", "csrf_token": token(page.text)}
    )
    assert wrong.status_code == 400 and "not right" in wrong.text
    done = client.post(
        "/account/second-factor", data={"code": totp.now(), "csrf_token": token(wrong.text)}
    )
    assert done.status_code == 303

    fresh = browser(small)
    assert sign_in(fresh, COLLEAGUE) == 303
    assert fresh.get("/applications").status_code == 303  # half signed in: not yet
    form = fresh.get("/sign-in/code")
    assert form.status_code == 200 and "code" in form.text
    refused = fresh.post("/sign-in/code", data={"code": "123456", "csrf_token": token(form.text)})
    assert refused.status_code == 400
    # A code is used once: the one used at enrolment, or now, is not taken again.
    step = int(time.time() // 30)
    later = totp.at((step + 1) * 30)  # within the allowed drift, and not used yet
    accepted = fresh.post("/sign-in/code", data={"code": later, "csrf_token": token(form.text)})
    assert accepted.status_code == 303
    assert fresh.get("/applications").status_code == 200
    again = browser(small)
    assert sign_in(again, COLLEAGUE) == 303
    form = again.get("/sign-in/code")
    replay = again.post("/sign-in/code", data={"code": later, "csrf_token": token(form.text)})
    assert replay.status_code == 400


def test_guessing_second_factor_codes_is_limited_like_passwords(small: Small) -> None:
    enrol(small, PANEL[0])
    client = browser(small)
    assert sign_in(client, PANEL[0]) == 303
    answers = []
    for _ in range(7):
        form = client.get("/sign-in/code")
        if form.status_code != 200:
            break
        answers.append(
            client.post(
                "/sign-in/code", data={"code": "000000", "csrf_token": token(form.text)}
            ).status_code
        )
    assert answers[:5] == [400] * 5 and answers[5] == 429


# ---- the client's address ----------------------------------------------------------------------


def request_from(peer: str, forwarded: str | None, proxies: str) -> Request:
    app = FastAPI()
    app.state.trusted_proxies = trusted_proxies(proxies)
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return Request(
        {"type": "http", "app": app, "client": (peer, 5000), "headers": headers, "method": "GET"}
    )


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    # No proxy configured: the header is the client's own words, and ignored (from loopback too).
    assert client_address(request_from("127.0.0.1", "203.0.113.9", "")) == "127.0.0.1"
    assert client_address(request_from("198.51.100.7", "203.0.113.9", "")) == "198.51.100.7"
    # From the configured proxy: the address it saw, the rightmost not itself a proxy.
    proxies = "10.0.0.0/24"
    assert client_address(request_from("10.0.0.5", "203.0.113.9", proxies)) == "203.0.113.9"
    spoofed = "1.2.3.4, 203.0.113.9, 10.0.0.6"
    assert client_address(request_from("10.0.0.5", spoofed, proxies)) == "203.0.113.9"
    # Not from the proxy: ignored; a malformed chain: the connection's address.
    assert client_address(request_from("198.51.100.7", "203.0.113.9", proxies)) == "198.51.100.7"
    assert client_address(request_from("10.0.0.5", "not-an-address", proxies)) == "10.0.0.5"


def test_a_bad_trusted_proxy_setting_is_refused_with_the_reason() -> None:
    from gpdpr.errors import UserError

    with pytest.raises(UserError, match=r"'10\.0\.0\.300' in GPDPR_TRUSTED_PROXIES"):
        trusted_proxies("10.0.0.1, 10.0.0.300")


def test_a_forged_address_does_not_escape_the_per_address_limit(small: Small) -> None:
    client = browser(small)
    for n in range(20):
        page = client.get("/sign-in")
        client.post(
            "/sign-in",
            data={"handle": f"guess{n}", "password": "x", "csrf_token": token(page.text)},
            headers={"X-Forwarded-For": f"203.0.113.{n}"},
        )
    page = client.get("/sign-in")
    blocked = client.post(
        "/sign-in",
        data={"handle": LEAD, "password": PASSWORD, "csrf_token": token(page.text)},
        headers={"X-Forwarded-For": "203.0.113.200"},
    )
    assert blocked.status_code == 429


# ---- a restart ---------------------------------------------------------------------------------


def serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpdpr",
            "portal",
            "serve",
            "--home",
            str(home),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "GPDPR_DATABASE_URL": os.environ.get("GPDPR_DATABASE_URL", "")},
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            return server
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the portal did not start: {server.stderr}") from None
            time.sleep(0.2)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=120)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_a_restarted_portal_keeps_its_sessions(small: Small) -> None:
    """Signed in on one server, which then stops; a new server process, started afresh on the
    same home, knows the session."""
    first = create_app(small.home, passwords=FAST, rate_limit=RateLimit())
    with running(first) as url, httpx.Client(base_url=url, timeout=LOADED) as client:
        assert sign_in(client, LEAD) == 303
        assert client.get("/applications").status_code == 200
        cookies = dict(client.cookies)
    first.state.portal.close()
    port = free_port()
    server = serve(small.home, port)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=LOADED, cookies=cookies
        ) as client:
            assert client.get("/applications").status_code == 200  # still signed in
            client.post("/sign-out", data={"csrf_token": token(client.get("/").text)})
            assert client.get("/applications").status_code == 303
    finally:
        stop(server)
