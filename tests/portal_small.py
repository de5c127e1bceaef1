"""A small service home for the portal's tests that need no lake: the governance cast with their
passwords and two identity-provider accounts (all that signing in needs), and a password checker
that counts its checks."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI

from governing import cast
from gpdpr.custodian.keys import init
from gpdpr.db import connect, url_for_home
from gpdpr.identifiers import draw_test_nhs_numbers, format_nhs_number
from gpdpr.portal.security import Passwords
from gpdpr.portal.serve import demo_accounts
from portal_home import FAST, PASSWORD


class CountingPasswords(Passwords):
    """FAST's hashing, counting how many passwords were checked."""

    def __init__(self) -> None:
        super().__init__(FAST.hasher)
        self.checked = 0
        self._lock = threading.Lock()

    def verify(self, stored: str | None, password: str) -> bool:
        with self._lock:
            self.checked += 1
        return super().verify(stored, password)


@dataclass
class Small:
    home: Path
    app: FastAPI
    passwords: CountingPasswords


def small_home(folder: Path) -> Path:
    """A service home with the governance cast and their passwords, and no lake: all that
    signing in needs."""
    home = folder / "home"
    home.mkdir(parents=True)
    init(home / "keys")
    engine = connect(url_for_home(home))
    cast(engine)
    engine.dispose()
    numbers = draw_test_nhs_numbers(np.random.default_rng(5), 2)
    demo_accounts(home, [format_nhs_number(int(n)) for n in numbers], PASSWORD, FAST)
    return home


HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def patient_client(url: str, n: int) -> httpx.Client:
    """A browser signed in as identity-provider account `n` on the portal at `url`."""
    client = httpx.Client(base_url=url, timeout=120)
    start = client.get("/patient/sign-in")
    login = client.get(start.headers["location"])
    fields = dict(HIDDEN.findall(login.text))
    fields.update(email=f"patient{n}@example.org", password=PASSWORD)
    back = client.post("/idp/authorize", data=fields)
    done = client.get(back.headers["location"])
    assert done.status_code == 303 and done.headers["location"] == "/patient", done.text
    return client
