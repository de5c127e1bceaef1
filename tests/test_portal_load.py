"""A bounded burst on the running server (uvicorn on 127.0.0.1), on each database: 50 patients
sign in at once through the identity provider, then send 2,000 opt-out requests between them
(40 each, setting and withdrawing both kinds in turn), while another client keeps reading pages.
Every request is answered, every one is recorded exactly once, in order, and the server keeps
answering throughout. (Requests per second are for bench/portal_bench.py, not a test.)"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa

from databases import BACKENDS
from gpdpr.db.models import Event, OptOutEvent
from gpdpr.portal.app import create_app
from gpdpr.portal.security import RateLimit
from gpdpr.portal.serve import running
from portal_home import FAST, PASSWORD, Home, build, database, patient_email

# Seconds a request may take: generous, so that a machine loaded by other work (a CPU hog
# beside the suite, scripts/busy-suite) slows the test without failing it.
LOADED = 600

CLIENTS = 50
PER_CLIENT = 40  # 50 x 40 = 2,000 opt-out requests
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


@dataclass
class Served:
    built: Home
    url: str
    patients: list[int]  # identity-provider account numbers with no opt-out yet


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with database(request.param):
        built = build(tmp_path_factory.mktemp(f"load-{request.param}"), patients=CLIENTS + 20)
        # 50 sign-ins at the same instant from one address: more attempts in flight than the
        # default per-address limit, which counts each attempt before its password is checked.
        app = create_app(built.home, passwords=FAST, rate_limit=RateLimit(per_address=2 * CLIENTS))
        portal = app.state.portal
        fresh = [
            n
            for n, number in enumerate(built.nhs_numbers, 1)
            if all(
                s["state"] == "never"
                for s in portal.registry.status(
                    portal.custodian.pseudonym_for(number, "test")
                ).values()
            )
        ][:CLIENTS]
        assert len(fresh) == CLIENTS
        with running(app) as url:
            yield Served(built, url, fresh)
        portal.close()
        built.engine.dispose()


def plan(i: int) -> tuple[str, str]:
    """The i-th request of a client: type1 set, type1 withdraw, ndoo set, ndoo withdraw, ..."""
    return ("type1" if i % 4 < 2 else "ndoo"), ("set" if i % 2 == 0 else "withdraw")


def one_patient(url: str, n: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=LOADED) as browser:
        start = browser.get("/patient/sign-in")
        login = browser.get(start.headers["location"])
        fields = dict(HIDDEN.findall(login.text))
        fields.update(email=patient_email(n), password=PASSWORD)
        back = browser.post("/idp/authorize", data=fields)
        done = browser.get(back.headers["location"])
        assert done.status_code == 303 and done.headers["location"] == "/patient"
        found = CSRF.search(browser.get("/patient").text)
        assert found is not None
        token = found.group(1)
        statuses = []
        for i in range(PER_CLIENT):
            kind, action = plan(i)
            answer = browser.post(
                "/patient/opt-out", data={"kind": kind, "action": action, "csrf_token": token}
            )
            statuses.append(answer.status_code)
        return statuses


def test_2000_concurrent_opt_outs_are_each_recorded_once_and_the_server_keeps_answering(
    served: Served,
) -> None:
    stop = threading.Event()
    reads: list[int] = []

    def keep_reading() -> None:
        with httpx.Client(base_url=served.url, timeout=LOADED) as reader:
            while not stop.is_set():
                reads.append(reader.get("/").status_code)
                reads.append(reader.get("/register").status_code)

    watcher = threading.Thread(target=keep_reading)
    watcher.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda n: one_patient(served.url, n), served.patients))
    finally:
        stop.set()
        watcher.join()
    assert [s for statuses in answers for s in statuses] == [303] * (CLIENTS * PER_CLIENT)
    assert len(reads) > 0 and set(reads) == {200}
    with httpx.Client(base_url=served.url) as after:
        assert after.get("/statistics").status_code == 200
    with served.built.engine.connect() as connection:
        rows = connection.execute(
            sa.select(OptOutEvent.pseudonym, OptOutEvent.kind, OptOutEvent.action)
            .where(OptOutEvent.source == "online")
            .order_by(OptOutEvent.id)
        ).all()
        published = connection.scalar(
            sa.select(sa.func.count())
            .select_from(Event)
            .where(Event.kind.like("optout.%"), Event.actor == "online")
        )
    assert len(rows) == CLIENTS * PER_CLIENT and published == CLIENTS * PER_CLIENT
    per_person: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pseudonym, kind, action in rows:
        per_person[pseudonym].append((kind, "set" if action == "set" else "withdraw"))
    assert len(per_person) == CLIENTS
    expected = [plan(i) for i in range(PER_CLIENT)]
    assert all(history == expected for history in per_person.values())
