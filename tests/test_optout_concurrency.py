"""Opt-out changes exactly once on each database, however requests overlap: a double click (the
same form, the same request id, twice at once), two tabs (two ids, the same change at once), and
a second process writing to the same SQLite file while the registry takes changes."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from databases import BACKENDS, engines, pseudonym, sqlite_engine
from gpdpr.db import pseudonym_hash
from gpdpr.db.models import Event, OptOutEvent
from gpdpr.optout.registry import Registry

PAIRS = 30
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
REQUEST = re.compile(r'name="request_id" value="([^"]+)"')
PER_PATIENT = 20


def field(pattern: re.Pattern[str], page: str) -> str:
    found = pattern.search(page)
    assert found, f"the page has no {pattern.pattern}"
    return found.group(1)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    yield from engines(request.param, tmp_path)


def together(calls: list[Callable[[], bool]]) -> list[bool]:
    """Run `calls` in threads released at the same instant; their answers, in order."""
    gate = threading.Barrier(len(calls), timeout=120)

    def run(call: Callable[[], bool]) -> bool:
        gate.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def recorded(engine: sa.Engine) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """Opt-out events per (pseudonym, action), and public events per person hash."""
    with engine.connect() as connection:
        history = Counter(
            (p, a)
            for p, a in connection.execute(sa.select(OptOutEvent.pseudonym, OptOutEvent.action))
        )
        public = Counter(
            str(details["person"])
            for (details,) in connection.execute(
                sa.select(Event.details).where(Event.kind.startswith("optout."))
            )
        )
    return history, public


def test_a_double_click_records_the_change_once(engine: sa.Engine) -> None:
    registry = Registry(engine)
    people = [pseudonym(f"double {n}") for n in range(PAIRS)]
    for n, who in enumerate(people):
        request = f"form-{n:04d}-0123456789abcdef"
        click: Callable[[], bool] = partial(
            registry.set, who, "type1", "online", request_id=request
        )
        answers = together([click] * 2)
        assert sorted(answers) == [False, True], (n, answers)
    history, public = recorded(engine)
    assert history == Counter({(who, "set"): 1 for who in people})
    assert public == Counter({pseudonym_hash(who): 1 for who in people})


def test_two_requests_for_the_same_change_at_once_record_it_once(engine: sa.Engine) -> None:
    """Two tabs (each its own request id), or the command line beside the portal: the state
    is read and written in one serialisable step, so only one of them changes it."""
    registry = Registry(engine)
    people = [pseudonym(f"tabs {n}") for n in range(PAIRS)]
    for n, who in enumerate(people):
        answers = together(
            [
                partial(
                    registry.set,
                    who,
                    "ndoo",
                    "online",
                    request_id=f"tab-{i}-{n:04d}-0123456789abcdef",
                )
                for i in range(2)
            ]
        )
        assert sorted(answers) == [False, True], (n, answers)
        # ...and the withdrawal that follows, sent twice without any id
        withdraw: Callable[[], bool] = partial(registry.withdraw, who, "ndoo", "central")
        answers = together([withdraw] * 2)
        assert sorted(answers) == [False, True], (n, answers)
    history, public = recorded(engine)
    assert history == Counter({(w, a): 1 for w in people for a in ("set", "withdrawn")})
    assert public == Counter({pseudonym_hash(who): 2 for who in people})
    assert all(registry.status(w)["ndoo"]["state"] == "withdrawn" for w in people)


def test_a_malformed_request_id_is_refused() -> None:
    from gpdpr.errors import UserError

    registry = Registry(sa.create_engine("sqlite://"))  # refused before any database use
    with pytest.raises(UserError, match="request id"):
        registry.set(pseudonym(1), "type1", "online", request_id="x'; DROP TABLE--")


# A second process that keeps writing to the central database (as `gpdpr optout` or `gpdpr erase`
# would beside the portal): each of its transactions takes the write lock and holds it a moment.
WRITER = textwrap.dedent(
    """
    import sys, time, hashlib
    from gpdpr.db import connect
    from gpdpr.optout.registry import Registry

    engine = connect(sys.argv[1])
    registry = Registry(engine)
    print("ready", flush=True)
    n = 0
    while sys.stdin.readline().strip() != "stop":
        n += 1
        who = hashlib.sha256(f"writer {n}".encode()).hexdigest()
        registry.set(who, "type1", "central")
        with engine.begin() as connection:  # the write lock, held a moment
            connection.exec_driver_sql("UPDATE opt_out_events SET source = source WHERE id < 0")
            time.sleep(0.02)
        time.sleep(0.02)  # and lets go of it as long, as a busy command would
        print(n, flush=True)
    """
)


class Writes:
    """How many writes the second process has made; `after(n)` waits for the n-th, so a test
    can spread its changes across the other process's writes however busy the machine is."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def one_more(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def after(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= n, timeout=120), "writer stuck"


@contextmanager
def second_writer(url: str) -> Iterator[Writes]:
    """Another process writing to the database at `url`, one short write transaction after
    another, for the block."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    stop = threading.Event()
    writes = Writes()

    def keep_writing() -> None:
        assert writer.stdin is not None and writer.stdout is not None
        while not stop.is_set():
            writer.stdin.write("go\n")
            writer.stdin.flush()
            if writer.stdout.readline():
                writes.one_more()

    try:
        assert writer.stdout.readline().strip() == "ready"
        pacer = threading.Thread(target=keep_writing)
        pacer.start()
        try:
            yield writes
        finally:
            stop.set()
            pacer.join(timeout=120)
        writer.stdin.write("stop\n")
        writer.stdin.flush()
        assert writer.wait(timeout=120) == 0
    finally:
        if writer.poll() is None:
            writer.kill()


def test_a_second_writing_process_makes_no_change_fail(engine: sa.Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    registry = Registry(engine)
    people = [pseudonym(f"busy {n}") for n in range(60)]
    failures: list[BaseException] = []

    def change(n: int, who: str) -> None:
        try:
            writes.after(n // 10)  # six people to each of the other process's writes
            registry.set(who, "type1", "online", request_id=f"busy-{who[:40]}")
            registry.set(who, "ndoo", "online")
        except BaseException as error:  # every failure is what is counted
            failures.append(error)

    with second_writer(url) as writes, ThreadPoolExecutor(8) as pool:
        list(pool.map(change, range(len(people)), people))
    assert failures == []
    history, _ = recorded(engine)
    assert all(history[(who, "set")] == 2 for who in people)


def test_patients_opt_outs_through_the_portal_all_succeed_beside_a_second_writer(
    tmp_path: Path,
) -> None:
    """What failed before as a bare "Internal Server Error" (database is locked): patients
    changing their opt-outs on the running portal while another process writes. Every change
    is answered with the confirmation page, and recorded once."""
    from gpdpr.portal.app import create_app
    from gpdpr.portal.security import RateLimit
    from gpdpr.portal.serve import running
    from portal_home import FAST
    from portal_small import patient_client, small_home

    home = small_home(tmp_path)
    app = create_app(home, passwords=FAST, rate_limit=RateLimit())
    answers: list[int] = []
    try:
        with running(app) as url:
            browsers = [patient_client(url, n) for n in (1, 2)]

            def changes(client: httpx.Client) -> None:
                # type1 set, type1 withdraw, ndoo set, ndoo withdraw, ...: each one a change
                for j in range(PER_PATIENT):
                    writes.after(j // 2)  # each pair beside another of the writer's writes
                    page = client.get("/patient").text
                    answers.append(
                        client.post(
                            "/patient/opt-out",
                            data={
                                "kind": "type1" if (j // 2) % 2 == 0 else "ndoo",
                                "action": "set" if j % 2 == 0 else "withdraw",
                                "csrf_token": field(CSRF, page),
                                "request_id": field(REQUEST, page),
                            },
                        ).status_code
                    )

            central = f"sqlite:///{home / 'central.db'}"
            with second_writer(central) as writes, ThreadPoolExecutor(2) as pool:
                list(pool.map(changes, browsers))
            for client in browsers:
                client.close()
    finally:
        app.state.portal.close()
    assert answers == [303] * (2 * PER_PATIENT)
    engine = sqlite_engine(home)
    try:
        online = Counter(
            source for (source,) in engine.connect().execute(sa.select(OptOutEvent.source))
        )
    finally:
        engine.dispose()
    assert online["online"] == 2 * PER_PATIENT
