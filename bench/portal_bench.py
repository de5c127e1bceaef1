"""Benchmark the portal: requests per second on the running server (uvicorn, one process, on
127.0.0.1) at several concurrencies.

    .venv/bin/python bench/portal_bench.py
    .venv/bin/python bench/portal_bench.py --only optout:50 register:10

Runs (KIND:CLIENTS), each in a fresh child process over a new service home (SQLite, the
custodian's keys, the sample governance record of `gpdpr.governance.sample`, identity-provider
accounts for the patients):

- optout: CLIENTS patients sign in at once through the identity provider (not timed), then each
  sends 40 opt-out requests (set and withdraw, both kinds in turn); timed from the first request
  to the last answer. Every request changes the registry and writes two rows (the opt-out event
  and the public event).
- register: CLIENTS visitors each read the Data Uses Register page 40 times.

Peak MB is the child's peak RSS (server and clients share the process).
"""

from __future__ import annotations

import json
import re
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runs import CHILD, chosen_runs, run_child

DEFAULT = [("optout", 1), ("optout", 10), ("optout", 50), ("register", 1), ("register", 10)]
PER_CLIENT = 40
PASSWORD = "benchmark password"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def make_home(folder: Path, patients: int) -> list[str]:
    import numpy as np
    from argon2 import PasswordHasher
    from sqlalchemy.orm import Session

    from gpdpr.custodian.keys import init
    from gpdpr.db import connect, url_for_home
    from gpdpr.governance import sample
    from gpdpr.identifiers import draw_test_nhs_numbers, format_nhs_number
    from gpdpr.portal.idp import IdentityProvider
    from gpdpr.portal.security import Passwords

    init(folder / "keys")
    engine = connect(url_for_home(folder))
    with Session(engine) as session, session.begin():
        sample.seed(session)
    engine.dispose()
    cheap = Passwords(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    idp = IdentityProvider(folder / "idp", cheap)
    numbers = draw_test_nhs_numbers(np.random.default_rng(7), patients)
    emails = []
    for n, number in enumerate(numbers, 1):
        email = f"patient{n}@example.org"
        idp.add_account(email, PASSWORD, format_nhs_number(int(number)), f"Patient {n}")
        emails.append(email)
    return emails


def sign_in(client: Any, email: str) -> str:
    start = client.get("/patient/sign-in")
    fields = dict(HIDDEN.findall(client.get(start.headers["location"]).text))
    fields.update(email=email, password=PASSWORD)
    back = client.post("/idp/authorize", data=fields)
    client.get(back.headers["location"])
    found = CSRF.search(client.get("/patient").text)
    assert found is not None, "sign-in failed"
    return found.group(1)


def child(kind: str, clients: int) -> dict[str, Any]:
    import httpx

    from gpdpr.portal.app import create_app
    from gpdpr.portal.security import RateLimit
    from gpdpr.portal.serve import running

    folder = Path(tempfile.mkdtemp(prefix="gpdpr-portal-bench-"))
    emails = make_home(folder, clients)
    app = create_app(folder, rate_limit=RateLimit())
    failures = 0
    with running(app) as url:
        browsers = [httpx.Client(base_url=url, timeout=120) for _ in range(clients)]
        tokens = []
        if kind == "optout":
            with ThreadPoolExecutor(clients) as pool:
                tokens = list(pool.map(sign_in, browsers, emails))

        def work(i: int) -> int:
            bad = 0
            for n in range(PER_CLIENT):
                if kind == "optout":
                    data = {
                        "kind": "type1" if n % 4 < 2 else "ndoo",
                        "action": "set" if n % 2 == 0 else "withdraw",
                        "csrf_token": tokens[i],
                    }
                    bad += browsers[i].post("/patient/opt-out", data=data).status_code != 303
                else:
                    bad += browsers[i].get("/register").status_code != 200
            return bad

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            failures = sum(pool.map(work, range(clients)))
        seconds = time.perf_counter() - started
        for browser in browsers:
            browser.close()
    app.state.portal.close()
    return {
        "kind": kind,
        "clients": clients,
        "requests": clients * PER_CLIENT,
        "seconds": seconds,
        "failures": failures,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    runs = chosen_runs(__doc__ or "", ["optout", "register"], DEFAULT)
    table = Table(
        "run",
        "clients",
        "requests",
        "seconds",
        "requests/s",
        "failed",
        "peak MB",
        title="portal: requests per second on the running server (SQLite)",
    )
    for kind, clients in runs:
        r = run_child(__file__, kind, str(clients))
        table.add_row(
            r["kind"],
            f"{r['clients']:,}",
            f"{r['requests']:,}",
            f"{r['seconds']:.1f}",
            f"{r['requests'] / r['seconds']:,.0f}",
            f"{r['failures']:,}",
            f"{r['peak_mb']:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == CHILD:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
