"""Serving the portal, and the accounts the demo signs in with.

`serve(home, host, port)` runs the portal with uvicorn until stopped. `demo_accounts(home, ...)`
gives every person in the governance record a password and makes identity-provider accounts for
some patients of the synthetic practices; `gpdpr demo` calls it, then `serve`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session

from gpdpr.db import connect, url_for_home
from gpdpr.governance import people
from gpdpr.portal.idp import IdentityProvider
from gpdpr.portal.security import STAFF_ROLES, Passwords

DEMO_PASSWORD = "gpdpr-demo-password"


@dataclass(frozen=True)
class DemoAccount:
    who: str  # a handle, or a patient's email address
    roles: tuple[str, ...]
    password: str
    note: str = ""


def demo_accounts(
    home: Path,
    patients: Iterable[str],
    password: str = DEMO_PASSWORD,
    passwords: Passwords | None = None,
) -> list[DemoAccount]:
    """A password for everyone in the governance record, and an identity-provider account
    (patient1@example.org, ...) for each NHS number in `patients`; the accounts made."""
    from gpdpr.portal.accounts import set_password

    passwords = passwords or Passwords()
    engine = connect(url_for_home(home))
    made: list[DemoAccount] = []
    try:
        with Session(engine) as session, session.begin():
            for person in people.people(session):
                set_password(session, passwords, person.handle, password)
                roles = tuple(r for r in STAFF_ROLES if r in person.roles)
                made.append(DemoAccount(person.handle, roles, password))
    finally:
        engine.dispose()
    idp = IdentityProvider(home / "idp", passwords)
    for n, number in enumerate(patients, 1):
        email = f"patient{n}@example.org"
        idp.add_account(email, password, number, f"Patient {n}")
        made.append(DemoAccount(email, ("patient",), password))
    return made


PUBLISH_SECONDS = 60.0


def publish_now(app: FastAPI) -> None:
    """Publish to the transparency log every event the portal has recorded and not yet
    published (an opt-out, a vote, a release...), as each central command does when it ends."""
    from gpdpr.transparency.publish import publish

    portal = app.state.portal
    with portal.writing():
        publish(portal.home, portal.engine)


def publishing(
    app: FastAPI, every: float = PUBLISH_SECONDS
) -> tuple[threading.Event, threading.Thread]:
    """Publish every `every` seconds in a background thread until the returned event is set
    (then once more). A failure is reported and tried again next time: the events wait in the
    record, unpublished, as after a command that failed to publish."""
    import sys
    import traceback

    stop = threading.Event()

    def loop() -> None:
        while True:
            stopping = stop.wait(every)
            try:
                publish_now(app)
            except Exception:
                print("gpdpr portal: publishing to the transparency log failed:", file=sys.stderr)
                traceback.print_exc()
            if stopping:
                return

    thread = threading.Thread(target=loop, name="gpdpr-publish", daemon=True)
    thread.start()
    return stop, thread


def serve(home: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the portal until stopped (Ctrl-C), publishing what it records to the transparency
    log as it goes (and when `gpdpr portal serve` ends, as every command does)."""
    import signal
    import sys

    import uvicorn

    from gpdpr.portal.app import create_app

    app = create_app(home)
    stop, publisher = publishing(app)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again: end as an exit, so the
    # last publish below (and the command's own) still happens.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from loopback;
        # the portal reads it itself, from configured proxies only (security.client_address).
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
    finally:
        stop.set()
        publisher.join(timeout=120)


def prepare_demo(home: Path, patients: int = 3) -> list[DemoAccount]:
    """Demo accounts for everyone in the governance record and for a few patients of the demo's
    first practice (not the first three, whom the demo opts out itself); the first of them,
    if there is one, a patient whose record an approved project's run read, so their "how my
    record was used" page has something to show."""
    import pyarrow.parquet as pq

    first = sorted(p for p in (home / "practices").iterdir() if p.is_dir())[0]
    numbers = pq.read_table(first / "patients.parquet", columns=["nhs_number"])["nhs_number"]
    candidates = [str(n) for n in numbers.to_pylist()[3:]]
    used = _first_used(home, candidates[:SEARCHED])
    chosen = ([used] if used else []) + [n for n in candidates if n != used]
    made = demo_accounts(home, chosen[:patients])
    if used is None:
        return made
    note = "an approved study's run read this patient's record"
    return [replace(a, note=note) if a.who == "patient1@example.org" else a for a in made]


# How many of the practice's patients the demo looks through for one whose record was used.
SEARCHED = 400


def _first_used(home: Path, numbers: list[str]) -> str | None:
    from gpdpr.custodian.central import Custodian
    from gpdpr.transparency.patient import record_uses

    engine = connect(url_for_home(home))
    try:
        custodian = Custodian(home / "keys", engine)
        for number in numbers:
            pseudonym = custodian.pseudonym_for(number, actor="demo", purpose="demo accounts")
            if record_uses(custodian, pseudonym, home).projects:
                return number
        return None
    finally:
        engine.dispose()


def serve_demo(
    home: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    say: Callable[[str], None] = print,
) -> None:
    """What `gpdpr demo` ends with: the demo accounts made, the address and the accounts
    printed, then the portal served until stopped."""
    accounts = prepare_demo(home)
    say(f"The portal is at http://{host}:{port}/ (Ctrl-C to stop). Demo accounts:")
    for account in accounts:
        note = f" ({account.note})" if account.note else ""
        say(
            f"  {account.who:<28} {', '.join(account.roles):<32} password: {account.password}"
            + note
        )
    say(
        "Try: sign in as a patient (Patients: sign in) to opt out or see how your record was "
        "used; as r.okafor to follow the diabetes study's runs; as check.one to check outputs; "
        "as panel.gp to review applications. The register and the activity log need no sign-in."
    )
    serve(home, host, port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the system's choice), for a server started next."""
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a background thread for the block; its base
    URL. Used by the browser and load tests and the benchmark."""
    import time

    import uvicorn

    port = free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            backlog=2048,
            proxy_headers=False,
            # Longer than any pause of a client on a loaded machine: at uvicorn's 5 s, a client
            # thread starved that long sent its next request on a connection the server had
            # just closed ("connection reset by peer", seen in the load test under load).
            timeout_keep_alive=120,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the portal did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
