"""`gpdpr optout` and `gpdpr custodian reidentify` as people meet them: real subprocesses, a
readable history, one line on stderr and exit code 2 when refused, and a central database that
never holds an NHS number, however many were typed in."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from gpdpr.custodian.central import Custodian, project_pseudonyms
from gpdpr.custodian.keys import init
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.optout.registry import Registry

GPDPR = [sys.executable, "-m", "gpdpr"]
NUMBERS = ["9434765919", "9990000018", "9990000026", "9990000034"]


@pytest.fixture(autouse=True)
def central_database_in_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command here, and every check, uses the SQLite file in the home folder."""
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    init(tmp_path / "home" / "keys")
    return tmp_path / "home"


def gpdpr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPDPR, *args, "--home", str(home)], capture_output=True, text=True, timeout=120
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit code 2, one line on stderr, carrying `message`."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def spaced(number: str) -> str:
    return f"{number[:3]} {number[3:6]} {number[6:]}"


def test_set_withdraw_and_status_with_its_history(home: Path) -> None:
    assert "Type 1 opt-out set" in ok(
        gpdpr(home, "optout", "set", "--type", "1", "--nhs-number", spaced(NUMBERS[0]))
    )
    again = ok(gpdpr(home, "optout", "set", "--type", "1", "--nhs-number", NUMBERS[0]))
    assert "already set" in again and "nothing changed" in again
    args = ["--type", "ndoo", "--nhs-number", NUMBERS[0], "--source", "proxy"]
    assert "National Data Opt-out set" in ok(gpdpr(home, "optout", "set", *args))
    assert "withdrawn" in ok(
        gpdpr(home, "optout", "withdraw", "--type", "1", "--nhs-number", NUMBERS[0])
    )

    status = ok(gpdpr(home, "optout", "status", "--nhs-number", NUMBERS[0]))
    assert "Type 1 opt-out: withdrawn since" in status
    assert "National Data Opt-out: set since" in status and "(proxy)" in status
    rows = [line for line in status.splitlines() if " UTC " in line and "│" in line]
    assert [("set" in r, "withdrawn" in r) for r in rows] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert NUMBERS[0] not in status

    never = ok(gpdpr(home, "optout", "status", "--nhs-number", NUMBERS[1]))
    assert "Type 1 opt-out: never" in never and "No opt-out has ever been recorded" in never


def test_the_cli_and_the_registry_agree(home: Path) -> None:
    ok(gpdpr(home, "optout", "set", "--type", "1", "--nhs-number", NUMBERS[2]))
    custodian = Custodian(home / "keys", connect(url_for_home(home)))
    pseudonym = custodian.pseudonym_for(NUMBERS[2], "test")
    assert Registry(custodian.engine).active_type1() == {pseudonym}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "--type", "2", "--nhs-number", NUMBERS[0]], "--type must be 1 or ndoo"),
        (["set", "--type", "1", "--nhs-number", "9434765918"], "not a valid NHS number"),
        (
            ["set", "--type", "1", "--nhs-number", NUMBERS[0], "--source", "central"],
            "--source must be online or proxy",
        ),
        (["status", "--nhs-number", "12"], "not a valid NHS number"),
    ],
)
def test_bad_requests_are_refused_on_one_line(home: Path, args: list[str], message: str) -> None:
    refused(gpdpr(home, "optout", *args), message)


def test_without_keys_or_with_readable_keys_nothing_happens(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["optout", "set", "--type", "1", "--nhs-number", NUMBERS[0]]
    refused(gpdpr(elsewhere, *args), "gpdpr custodian init --keys")
    os.chmod(home / "keys", 0o755)
    refused(gpdpr(home, *args), f"chmod 700 {home / 'keys'}")
    assert not (elsewhere / "central.db").exists()
    assert Registry(connect(url_for_home(home))).active_type1() == set()


def test_reidentification_from_request_to_a_private_csv(home: Path, tmp_path: Path) -> None:
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(f"{NUMBERS[1]}\n{spaced(NUMBERS[3])}\n")
    request = [
        "custodian", "reidentify", "request", "--project", "P0042",
        "--legal-basis", "consent", "--purpose", "follow-up with consent",
        "--nhs-numbers", str(numbers), "--requested-by", "ada",
    ]  # fmt: skip
    assert "request 1 recorded" in ok(gpdpr(home, *request))
    approve = ["custodian", "reidentify", "approve", "1", "--approver"]
    refused(gpdpr(home, *approve, "ada"), "ada made request 1 and cannot approve it")
    assert "now pending" in ok(gpdpr(home, *approve, "brian"))
    refused(gpdpr(home, *approve, "brian"), "brian has already approved request 1")

    out = tmp_path / "result.csv"
    fulfil = ["custodian", "reidentify", "fulfil", "1", "--nhs-numbers", str(numbers)]
    fulfil += ["--actor", "officer", "--out", str(out)]
    refused(gpdpr(home, *fulfil), "request 1 is not approved")
    assert not out.exists()
    assert "now approved" in ok(gpdpr(home, *approve, "chidi"))
    assert "2 project pseudonyms" in ok(gpdpr(home, *fulfil))

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open() as f:
        rows = list(csv.DictReader(f))
    custodian = Custodian(home / "keys", connect(url_for_home(home)))
    lake = [custodian.pseudonym_for(n, "test") for n in (NUMBERS[1], NUMBERS[3])]
    key = custodian.project_key("P0042", "test")
    assert rows == [
        {"nhs_number": n, "project_pseudonym": p}
        for n, p in zip(
            (NUMBERS[1], NUMBERS[3]),
            project_pseudonyms(key, pa.array(lake)).to_pylist(),
            strict=True,
        )
    ]
    refused(gpdpr(home, *fulfil), "already exists")
    fulfil[-1] = str(tmp_path / "again.csv")
    refused(gpdpr(home, *fulfil), "request 1 has already been fulfilled")
    assert not (tmp_path / "again.csv").exists()


def test_a_numbers_file_is_checked_line_by_line(home: Path, tmp_path: Path) -> None:
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(f"{NUMBERS[0]}\n9434765918\n\n{NUMBERS[1]}\n\n")
    request = [
        "custodian", "reidentify", "request", "--project", "P1", "--legal-basis", "consent",
        "--purpose", "p", "--nhs-numbers", str(numbers), "--requested-by", "ada",
    ]  # fmt: skip
    result = gpdpr(home, *request)
    refused(result, "2 of 4 lines are not valid NHS numbers")
    assert "lines 2, 3" in result.stderr and "9434765918" not in result.stderr
    numbers.write_text(f"{NUMBERS[0]}\n")
    request[request.index("consent")] = "curiosity"
    refused(gpdpr(home, *request), "'curiosity' is not a legal basis")


def test_the_database_file_never_holds_an_nhs_number(home: Path, tmp_path: Path) -> None:
    for number in NUMBERS[:2]:
        ok(gpdpr(home, "optout", "set", "--type", "1", "--nhs-number", spaced(number)))
        ok(gpdpr(home, "optout", "withdraw", "--type", "1", "--nhs-number", number))
        ok(gpdpr(home, "optout", "status", "--nhs-number", number))
    ok(gpdpr(home, "optout", "set", "--type", "ndoo", "--nhs-number", NUMBERS[2]))
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("\n".join(NUMBERS) + "\n")
    ok(gpdpr(home, "custodian", "reidentify", "request", "--project", "P1",
             "--legal-basis", "s251_support", "--purpose", "audit", "--nhs-numbers", str(numbers),
             "--requested-by", "ada"))  # fmt: skip
    for approver in ("brian", "chidi"):
        ok(gpdpr(home, "custodian", "reidentify", "approve", "1", "--approver", approver))
    ok(gpdpr(home, "custodian", "reidentify", "fulfil", "1", "--nhs-numbers", str(numbers),
             "--out", str(tmp_path / "out.csv"), "--actor", "officer"))  # fmt: skip
    # A purpose naming a person is refused before anything is written.
    refused(
        gpdpr(home, "custodian", "reidentify", "request", "--project", "P1",
              "--legal-basis", "consent", "--purpose", f"for {spaced(NUMBERS[0])}",
              "--nhs-numbers", str(numbers), "--requested-by", "ada"),
        "reads as an NHS number",
    )  # fmt: skip

    files = sorted(home.glob("central.db*"))
    assert files and sum(f.stat().st_size for f in files) > 0
    stored = b"".join(f.read_bytes() for f in files)
    assert b"opt_out_events" in stored  # the scan reads the real thing
    for number in NUMBERS:
        for form in (number, spaced(number)):
            assert form.encode() not in stored
            assert form.encode("utf-16-le") not in stored
