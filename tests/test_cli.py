"""The gpdpr command as a person uses it: real subprocesses, real exit codes, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GPDPR = [sys.executable, "-m", "gpdpr"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPDPR, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--practices", "0"], "--practices must be at least 1"),
        (["--patients", "-5"], "--patients must be at least 1"),
        (["--practices", "50", "--patients", "100"], "too few for 50 practices"),
        (["--patients", "1100000"], "999 test range"),
        (["--mess-rate", "2"], "--mess-rate must be between 0 and 0.5"),
        (["--as-of", "31/10/2026"], "--as-of must be a date"),
        (["--seed", "-1"], "--seed must be zero or positive"),
    ],
)
def test_impossible_arguments_give_one_line_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run("synth", "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert leftovers(tmp_path) == []


def test_a_choice_outside_its_list_is_refused_listing_the_choices(tmp_path: Path) -> None:
    """A choice is checked by the command line itself (its help lists the choices too): the
    error names the option and every choice, and nothing is written."""
    result = run("synth", "--out", str(tmp_path / "out"), "--format", "xml")
    assert result.returncode == 2
    assert "'--format'" in result.stderr and "'fhir', 'columnar'" in result.stderr, result.stderr
    assert leftovers(tmp_path) == []


def test_an_unwritable_or_impossible_folder_is_refused_cleanly(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out in [a_file / "out", Path("/proc/gpdpr-cannot-write-here")]:
        result = run("synth", "--out", str(out), "--practices", "1", "--patients", "100")
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert f"cannot write to {out}" in result.stderr
    assert leftovers(tmp_path) == ["a-file"]


def test_an_existing_folder_with_content_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run("synth", "--out", str(out), "--practices", "1", "--patients", "100")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert leftovers(out) == ["precious.txt"]


def test_synth_writes_one_folder_per_practice_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "nation"
    result = run(
        "synth",
        "--out",
        str(out),
        "--practices",
        "3",
        "--patients",
        "900",
        "--seed",
        "4",
        "--format",
        "fhir",
    )
    assert result.returncode == 0, result.stderr
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["Z10001", "Z10002", "Z10003"]
    assert all(
        (out / f / "Patient.ndjson").exists() and (out / f / "export.json").exists()
        for f in folders
    )
    summary = json.loads((out / "synth-summary.json").read_text())
    assert summary["patients"] == 900
    assert "900 patient records" in result.stdout
    assert "Recorded prevalence" in result.stdout and "hypertension" in result.stdout


def test_a_stopped_run_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "nation"
    proc = subprocess.Popen(
        [
            *GPDPR,
            "synth",
            "--out",
            str(out),
            "--practices",
            "200",
            "--patients",
            "300000",
            "--format",
            "fhir",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    staged = None
    while time.monotonic() < deadline and staged is None:
        staged = next(
            (
                p
                for p in tmp_path.iterdir()
                if p.name.startswith(".nation.partial") and any(p.iterdir())
            ),
            None,
        )
        time.sleep(0.1)
    assert staged is not None, "the run never started writing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert leftovers(tmp_path) == []


def test_demo_runs_and_can_run_again(tmp_path: Path) -> None:
    for _ in range(2):
        result = run("demo", "--home", str(tmp_path / "home"), "--no-serve")
        assert result.returncode == 0, result.stderr
        assert "60,000 patient records" in result.stdout
        assert "gpdpr portal serve --home" in result.stdout
    practices = tmp_path / "home" / "practices"
    assert len([p for p in practices.iterdir() if p.is_dir()]) == 20
    assert "20 signed packages" in result.stdout
    # The centre took every package: verified, loaded in one lake version, then deleted (the
    # lake is the only central copy), and the erasure cycle ran.
    assert not [p for p in (tmp_path / "home" / "packages").iterdir() if p.is_dir()]
    assert "lake version 1 committed" in result.stdout
    assert "3 patients of Z10001 opt out online" in result.stdout
    assert "deletion receipts recorded" in result.stdout
    shown = run("lake", "show", "--home", str(tmp_path / "home"))
    assert shown.returncode == 0, shown.stderr
    assert "vacuum" in shown.stdout and "clinical_events" in shown.stdout
    # The demo ends with everything it did in the public log, verified from its files alone.
    assert "Verified from the public files alone" in result.stdout
    pinned = str(tmp_path / "home" / "keys" / "log" / "policy")
    verified = run("log", "verify", "--log-dir", str(tmp_path / "home" / "log"), "--policy", pinned)
    assert verified.returncode == 0 and "verified" in verified.stdout, verified.stderr


def test_demo_ends_serving_the_portal_with_its_accounts_until_stopped(tmp_path: Path) -> None:
    """`gpdpr demo` as the README runs it: every step, then the portal left running at the
    printed address with the printed accounts; a staff account signs in; SIGTERM stops it with
    what it recorded published to the log."""
    import queue
    import re
    import threading
    import urllib.parse
    import urllib.request
    from http.cookiejar import CookieJar

    from gpdpr.portal.serve import free_port

    home = tmp_path / "home"
    port = free_port()
    proc = subprocess.Popen(
        [*GPDPR, "demo", "--home", str(home), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for x in proc.stdout or ():
            lines.put(x)

    threading.Thread(target=pump, daemon=True).start()
    said: list[str] = []

    def heard() -> str:
        while not lines.empty():
            said.append(lines.get())
        return "".join(said)

    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:  # every step, then the portal answers
            assert proc.poll() is None and time.monotonic() < deadline, heard()
            try:
                home_page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "gpdpr" in home_page
        while "patient3@example.org" not in heard():  # the last account, printed before serving
            assert time.monotonic() < deadline, heard()
            time.sleep(0.1)
        text = heard()
        assert f"The portal is at http://127.0.0.1:{port}/" in text, text
        accounts = dict(re.findall(r"^\s+(\S+)\s+.*password: (\S+)", text, re.MULTILINE))
        assert "patient1@example.org" in accounts and "check.one" in accounts, text
        register = urllib.request.urlopen(base + "/register", timeout=10).read().decode()
        assert "HbA1c checks" in register and "Refused applications" in register
        # a staff account signs in with what was printed
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        form = opener.open(base + "/sign-in", timeout=10).read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        fields = {"handle": "check.one", "password": accounts["check.one"]}
        data = urllib.parse.urlencode({**fields, "csrf_token": token.group(1)}).encode()
        checking = opener.open(base + "/sign-in", data=data, timeout=10)
        assert "Signed in as check.one" in checking.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 143, heard()  # ended by the signal, as `kill` would
    # patient1, as printed, is a patient whose record the demo's study read
    assert "patient1@example.org         patient" in text and "study's run read" in text
    number = json.loads((home / "idp" / "accounts.json").read_text())["patient1@example.org"]
    mine = run("log", "my-record", "--nhs-number", number["nhs_number"], "--home", str(home))
    assert mine.returncode == 0 and "RUN-000001" in mine.stdout, mine.stdout + mine.stderr
    assert "We hold your GP record, as sent by 1 GP practice" in mine.stdout
    pinned = str(home / "keys" / "log" / "policy")
    verified = run("log", "verify", "--log-dir", str(home / "log"), "--policy", pinned)
    assert verified.returncode == 0 and "verified" in verified.stdout, verified.stderr


def test_demo_refuses_a_port_in_use_before_doing_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("demo", "--home", str(tmp_path / "home"), "--port", str(port))
    assert (
        result.returncode == 2 and f"cannot serve the portal on 127.0.0.1:{port}" in result.stderr
    )
    assert "--no-serve" in result.stderr and not (tmp_path / "home").exists()


def test_demo_will_not_delete_keys_it_did_not_make(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True)
    (keys / "pseudonym.key").write_text("somebody's real key")
    result = run("demo", "--home", str(tmp_path / "home"))
    assert result.returncode == 2 and "the demo did not make" in result.stderr
    assert (keys / "pseudonym.key").read_text() == "somebody's real key"


def test_demo_will_not_delete_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "home" / "practices"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    result = run("demo", "--home", str(tmp_path / "home"))
    assert result.returncode == 2 and "was not made by the demo" in result.stderr
    assert (mine / "notes.txt").read_text() == "mine"


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("synth", "demo", "practice", "custodian", "collect", "erase", "optout", "lake"):
        assert command in result.stdout
