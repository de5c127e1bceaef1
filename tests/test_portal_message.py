"""What the portal tells people, whole. A patient's record: the timeline shows the practice that
sent their data, the approved run that read it with its question in words, their opt-out, and the
erasure with its receipt; every card's wording follows the state they are in; and "we hold
nothing about you" is told apart from "held, and nobody used it", to that person alone. The
register downloads as CSV and JSON from the records the page shows. The application form offers
only the data items a research run can read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from governing import LEAD, bring_to
from gpdpr.collect.received import collected_about
from gpdpr.governance import register
from gpdpr.identifiers import nhs_check_digit
from gpdpr.optout.registry import Registry
from gpdpr.portal.app import create_app
from gpdpr.portal.idp import IdentityProvider
from gpdpr.portal.security import RateLimit
from gpdpr.tre import runs
from portal_home import FAST, PASSWORD, STUDY, Home, build, database

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
NEVER_HELD = "nobody@example.org"


@dataclass
class Site:
    built: Home
    client: TestClient
    app: FastAPI
    run: str
    practice: str


def never_held_number(held: set[str]) -> str:
    """A valid test-range NHS number that no practice sent."""
    body = 999_123_456
    while True:
        check = nhs_check_digit(body)
        number = f"{body}{check}"
        if check is not None and number not in held:
            return number
        body += 1


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with database("sqlite"):
        built = build(tmp_path_factory.mktemp("timeline"))
        practices = sorted(p for p in (built.home / "practices").iterdir() if p.is_dir())
        held = {
            str(n)
            for p in practices
            for n in pq.read_table(p / "patients.parquet", columns=["nhs_number"])[
                "nhs_number"
            ].to_pylist()
        }
        IdentityProvider(built.home / "idp", FAST).add_account(
            NEVER_HELD, PASSWORD, never_held_number(held), "Never held"
        )
        folder = tmp_path_factory.mktemp("study")
        (folder / "study.py").write_text(STUDY)
        made = runs.submit(
            built.home, LEAD, built.agreement, runs.compile_file(folder / "study.py")
        )
        app = create_app(built.home, passwords=FAST, rate_limit=RateLimit(), dummy_patients=400)
        try:
            yield Site(built, TestClient(app), app, made.reference, practices[0].name)
        finally:
            app.state.portal.close()
            built.engine.dispose()


def signed_in(site: Site, email: str) -> TestClient:
    browser = TestClient(site.app, follow_redirects=False)
    start = browser.get("/patient/sign-in")
    login = browser.get(start.headers["location"])
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', login.text))
    back = browser.post("/idp/authorize", data={**fields, "email": email, "password": PASSWORD})
    done = browser.get(back.headers["location"])
    assert done.headers["location"] == "/patient", done.text
    return browser


def words(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def adult_read_by_the_run(site: Site) -> str:
    """The email of a patient with an account whose record the run read."""
    for n in range(1, len(site.built.nhs_numbers) + 1):
        browser = signed_in(site, f"patient{n}@example.org")
        if site.run in browser.get("/patient/record").text:
            return f"patient{n}@example.org"
    raise AssertionError("the run read none of the patients with accounts")


def test_a_damaged_file_of_uses_tells_the_patient_the_page_cannot_be_shown_now(
    site: Site,
) -> None:
    """A run's file of uses cut short: the patient's page says it cannot be shown (a page that
    left a project out would not be true), and shows nothing of the service's machine."""
    email = adult_read_by_the_run(site)
    browser = signed_in(site, email)
    files = sorted(site.built.home.rglob("uses.bin"))
    assert files
    kept = {path: path.read_bytes() for path in files}
    try:
        for path, body in kept.items():
            path.write_bytes(body[:-3])
        response = browser.get("/patient/record")
        assert response.status_code == 503
        said = words(response.text)
        assert "cannot be shown just now" in said and "operators have been told" in said
        assert str(site.built.home) not in response.text and "uses.bin" not in response.text
    finally:
        for path, body in kept.items():
            path.write_bytes(body)
    assert browser.get("/patient/record").status_code == 200


def test_the_timeline_shows_collection_use_opt_out_and_erasure_with_its_receipt(
    site: Site,
) -> None:
    from gpdpr.collect.service import Central, erase_cycle

    email = adult_read_by_the_run(site)
    browser = signed_in(site, email)
    before = words(browser.get("/patient/record").text)
    assert "We hold your GP record, as sent by 1 GP practice; 1 approved project used it." in before
    assert f"Practice {site.practice} sent data about you" in before
    assert "Used by an approved project" in before and f"Run {site.run}" in before
    # the question in words, not only its hash
    assert "It counts how many people are in each group of sex (adults_by_sex)" in before
    card = words(browser.get("/patient").text)
    assert "Your practice sends your GP record, pseudonymised" in card  # not set: what happens now

    page = browser.get("/patient").text
    browser.post(
        "/patient/opt-out",
        data={"kind": "type1", "action": "set", "csrf_token": CSRF.findall(page)[0]},
    )
    card = words(browser.get("/patient").text)
    assert "erased at the next erasure cycle" in card and "receipt" in card

    # Practice-recorded dissents await too, but their rows never arrived: the held are indexed.
    held = {p for p in Registry(site.built.engine).awaiting_receipt() if indexed(site, p)}
    assert held, "the person who opted out online is in the collections index"
    cycle = erase_cycle(Central(site.built.home))
    assert cycle.receipts >= 1
    assert not any(indexed(site, p) for p in held), "erasure empties the index of them"
    card = words(browser.get("/patient").text)
    receipt = re.search(r"was erased on \d\d \w+ \d{4}: deletion receipt (\d+)", card)
    assert receipt is not None, card  # the state it is in now: done, with its receipt
    assert "next erasure cycle" not in card

    after = words(browser.get("/patient/record").text)
    assert "We hold nothing about you now: what we held was erased on" in after
    assert f"(receipt {receipt.group(1)})" in after
    assert f"Your record was erased: receipt {receipt.group(1)}" in after
    assert "Type 1 opt-out set You did this online." in after
    # Which runs read them goes too: a run's population is people with something in common,
    # known from the record they asked to have erased (gpdpr.collect.erase_beyond).
    assert f"Run {site.run}" not in after
    assert f"Practice {site.practice} sent data about you" not in after  # nothing held now
    # nothing of what was erased is shown: not its practice, its extracts or its entries
    raw = browser.get("/patient/record").text
    for erased in (site.practice, "entries about you", "entry about you", "extract"):
        assert erased not in raw, erased
    assert "which research runs read it went with it: this receipt is all the service" in after
    # newest first: the erasure, then the opt-out
    assert after.index("Your record was erased") < after.index("Type 1 opt-out set")


def indexed(site: Site, pseudonym: str) -> int:
    """The collections index's rows about one person."""
    with Session(site.built.engine) as session:
        return len(collected_about(session, pseudonym))


def test_a_patients_record_page_reads_no_lake_file(site: Site) -> None:
    """What practices sent is the collections index, in the database: with the lake moved
    away, the page still shows every package that held the person."""
    lake = site.built.home / "lake"
    away = lake.with_name("lake-away")
    held = None
    lake.rename(away)
    try:
        for n in range(1, len(site.built.nhs_numbers) + 1):
            shown = words(signed_in(site, f"patient{n}@example.org").get("/patient/record").text)
            if "We hold your GP record" in shown:
                held = shown
                break
    finally:
        away.rename(lake)
    assert held is not None, "no held patient's record page rendered without the lake"
    assert f"Practice {site.practice} sent data about you" in held or "sent data about you" in held
    assert re.search(r"In its historic extract: [\d,]+ entr(y|ies) about you", held)


def test_nothing_held_is_told_apart_from_held_and_unused(site: Site) -> None:
    nobody = words(signed_in(site, NEVER_HELD).get("/patient/record").text)
    assert "We hold nothing about you: no GP practice has sent a record for you" in nobody
    assert "sent data about you" not in nobody
    # someone held but whom no run read (a child: the study counts adults)
    unused = None
    for n in range(1, len(site.built.nhs_numbers) + 1):
        shown = words(signed_in(site, f"patient{n}@example.org").get("/patient/record").text)
        if "no approved project has used it" in shown:
            unused = shown
            break
    assert unused is not None
    assert re.search(
        r"We hold your GP record, as sent by \d GP practices?; no approved project has used it",
        unused,
    )
    # the public pages say neither: what is held about whom is for that person alone
    for path in ("/", "/register", "/statistics", "/log"):
        public = site.client.get(path).text
        assert "We hold nothing about you" not in public and "We hold your GP record" not in public


def test_the_register_downloads_are_the_records_the_page_shows(site: Site) -> None:
    from gpdpr.governance import register
    from gpdpr.spec import shipped

    page = site.client.get("/register").text
    assert 'href="/register.csv"' in page and 'href="/register.json"' in page
    shown = site.client.get("/register.json")
    assert shown.status_code == 200 and shown.headers["content-type"] == "application/json"
    agreements = shown.json()["agreements"]
    assert [a["agreement"] for a in agreements] == [site.built.agreement]
    table = site.client.get("/register.csv")
    header, *rows = table.text.splitlines()
    assert tuple(header.split(",")) == register.CSV_COLUMNS and len(rows) == 1
    assert rows[0].startswith(site.built.agreement)
    # data items in words, and the words the page uses explained on it
    events = shipped().tables["clinical_events"]
    code = next(f for f in events.fields if f.name == "code")
    assert f"{events.title}: {code.description} clinical_events.code" in words(page)
    assert 'id="word-lake-version"' in page and 'id="word-legal-basis"' in page


def test_the_application_form_offers_only_items_a_run_can_read(site: Site) -> None:
    browser = TestClient(site.app, follow_redirects=False)
    page = browser.get("/sign-in").text
    browser.post(
        "/sign-in",
        data={"handle": LEAD, "password": PASSWORD, "csrf_token": CSRF.findall(page)[0]},
    )
    form = browser.get("/applications/new").text
    started = browser.post(
        "/applications/new",
        data={
            "csrf_token": CSRF.findall(form)[0],
            "step": "about",
            "title": "Offered items",
            "purpose_category": "research",
            "lay_summary": "Which items may a run read?",
            "technical_summary": "The items step.",
            "expected_benefit": "A form that offers only what can be used.",
        },
    )
    assert started.status_code == 303, started.text
    items_step = browser.get(started.headers["location"] + "/items").text
    offered = set(re.findall(r'name="items" value="([^"]+)"', items_step))
    assert "clinical_events.code" in offered and "patients.sex" in offered
    assert not {i for i in offered if i.endswith((".record_id", ".last_modified"))}
    # and one sent anyway (a hand-made one-page request) is refused, with nothing saved
    before = browser.get("/applications").text
    refused = browser.post(
        "/applications/new",
        data={
            "csrf_token": CSRF.findall(form)[0],
            "title": "Record ids",
            "items": "clinical_events.record_id",
        },
    )
    assert refused.status_code == 400 and "no research run can read it" in refused.text
    assert browser.get("/applications").text.count("Record ids") == before.count("Record ids")


def test_statistics_give_shares_and_rates_against_the_population_covered(site: Site) -> None:
    shown = words(site.client.get("/statistics").text)
    shares = [float(x) for x in re.findall(r"(\d+\.\d)% ", shown.split("Opt-outs over time")[0])]
    assert shares and abs(sum(shares) - 100) < 0.5  # the regions' shares add up
    assert re.search(
        r"For scale: [\d,]+ patients are covered\. Type 1 set: [\d,]+ in these months "
        r"\(\d+\.\d\d% of patients covered\)",
        shown,
    )


def test_the_verifier_the_log_page_offers_runs_as_written_and_catches_a_changed_entry(
    site: Site, tmp_path: Path
) -> None:
    import ast
    import hashlib
    import shutil
    import subprocess
    import sys

    from gpdpr.portal.serve import publish_now, running
    from gpdpr.transparency.demo import demo_witness
    from gpdpr.transparency.publish import log_folder

    demo_witness(site.built.home)  # a witness co-signs: the policy verify.py carries needs one
    publish_now(site.app)
    page = words(site.client.get("/log/verify").text)
    served = site.client.get("/log/verify.py")
    assert served.status_code == 200
    assert f"Its SHA-256 is {hashlib.sha256(served.content).hexdigest()}" in page
    assert "pip install gpdpr" not in page
    script = tmp_path / "verify.py"
    script.write_bytes(served.content)
    # it stands alone: the standard library and cryptography, nothing of gpdpr's
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(served.text))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert all(
        name.split(".")[0] in sys.stdlib_module_names or name.startswith("cryptography")
        for name in imported
    ), imported

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", str(script), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with running(site.app) as url:
        done = check("--url", f"{url}/log/files")
    assert done.returncode == 0 and "the log verifies" in done.stdout, done.stderr
    copy = Path(shutil.copytree(log_folder(site.built.home), tmp_path / "copy"))
    assert check("--dir", str(copy)).returncode == 0
    entries = copy / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().replace(b'"seq":0', b'"seq":0 ', 1))
    changed = check("--dir", str(copy))
    assert changed.returncode == 1 and "does NOT verify" in changed.stderr


def test_a_released_measure_is_drawn_on_the_register_as_its_rate_over_time(
    site: Site, tmp_path: Path
) -> None:
    import hashlib

    from typer.testing import CliRunner

    from governing import CHECKERS, act
    from gpdpr.cli import app
    from gpdpr.tre.release import checking
    from portal_home import MEASURED

    (tmp_path / "study.py").write_text(MEASURED.replace("over_30s_by_sex", "over_30s_drawn"))
    made = runs.submit(
        site.built.home, LEAD, site.built.agreement, runs.compile_file(tmp_path / "study.py")
    )
    name = "measure_any_event.csv"
    body = (made.folder / runs.OUTPUTS / name).read_bytes()
    files = {name: (hashlib.sha256(body).hexdigest(), len(body))}
    cells = runs.cells_of(site.built.home, made.reference, set(files))
    request = act(
        site.built.engine,
        lambda s: (
            checking.request_release(
                s, LEAD, made.reference, files, "Any event", "For the register's chart.", cells
            ).reference
        ),
    )
    for checker in CHECKERS:
        done = CliRunner().invoke(
            app,
            [
                "tre",
                "review",
                "approve",
                request,
                name,
                "--as",
                checker,
                "--home",
                str(site.built.home),
            ],
        )
        assert done.exit_code == 0, done.output
    page = site.client.get("/register").text
    drawn = re.findall(r'<svg[^>]*class="chart (?:wide|narrow)"', page)
    assert len(drawn) == 2  # the measure, drawn for a wide screen and for a phone
    assert f"{name}: rate per interval" in page
    # the static register the release wrote (index.html) shows the very same register
    bring_to(site.built.engine, "refused")  # and a refusal, written and served alike
    with Session(site.built.engine) as session:
        register.write(session, site.built.home / "register")
    static = (site.built.home / "register" / "index.html").read_text()
    served = site.client.get("/register").text
    assert the_register(static) == the_register(served, PORTAL_LINKS)
    shown = the_register(static)
    for seen in (f"{name}: rate per interval", "The question asked", "Refused applications (1)"):
        assert seen in shown, seen
    # and every link in it leads somewhere, from the folder and from the portal alike
    for href in set(re.findall(r'href="([^"#]+)"', shown)):
        assert (site.built.home / "register" / href).is_file(), href
        served_at = "/" + href if href.startswith("register.") else "/register/" + href
        assert site.client.get(served_at).status_code == 200, served_at


# The portal's links to the register's files, as the static register (in that folder) writes them.
PORTAL_LINKS = {'href="/register/': 'href="', 'href="/register.': 'href="register.'}


def the_register(page: str, links: dict[str, str] | None = None) -> str:
    """The register's own part of a page (register_view.body), with the moment it was made
    taken out (the two were made seconds apart) and the portal's links made the folder's."""
    found = re.search(
        r"<div class=\"register\" id=\"register\">.*?<!-- the register ends -->", page, re.S
    )
    assert found is not None, "no register on the page"
    shown = re.sub(r"as of [0-9T:+-]+", "as of (when)", found.group(0))
    for portal, folder in (links or {}).items():
        shown = shown.replace(portal, folder)
    return shown


def test_the_register_draws_when_each_agreement_runs(site: Site) -> None:
    page = site.client.get("/register").text
    drawing = page.split('class="timeline-chart"')[1].split("</svg>")[0]
    assert f"{site.built.agreement} (active)" in drawing and ">today<" in drawing
    bars = re.findall(r'<rect x="([\d.]+)%" y="\d+" width="([\d.]+)%"', drawing)
    assert len(bars) == 1 and all(float(x) >= 0 and float(x) + float(w) <= 100 for x, w in bars)


def test_the_home_page_shows_the_data_flow_with_a_safeguard_at_each_step(site: Site) -> None:
    page = site.client.get("/").text
    flow = page.split('<ol class="flow"')[1].split("</ol>")[0]
    steps = re.findall(r"<h3>\d\. ([^<]+)</h3>", flow)
    assert steps == [
        "Your GP practice",
        "Pseudonymised at source",
        "The centre",
        "The research environment",
        "Checked results",
    ]
    assert flow.count('class="guard">Safeguard:') == len(steps)
