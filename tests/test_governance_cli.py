"""`gpdpr governance` as the people in it use it: an applicant writing an application from the
example, the administrator and the panel taking it to a decision and an agreement, a researcher
asking for access, and every refusal on one line, exit code 2, with the record left as it was."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from databases import BACKENDS, postgres_url
from gpdpr.cli import app
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.terminal import console

LEEDS = "University of Leeds"
ICB = "NHS West Yorkshire Integrated Care Board"
TRUST = "Diabetes Research Trust"
PANEL = ("m.one", "m.two", "m.three", "m.four")


def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command here, and every check, uses the SQLite file in the home folder, and the
    panel's quorum is the default unless a test says otherwise."""
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.delenv("GPDPR_PANEL_QUORUM", raising=False)
    # Tables as wide as a terminal would show them, however the test runner set COLUMNS (the
    # console reads it once, on import).
    monkeypatch.setattr(console, "_width", 200)


@pytest.fixture(autouse=True)
def central_database_in_home(monkeypatch: pytest.MonkeyPatch) -> None:
    isolated(monkeypatch)


def gpdpr(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["governance", *args, "--home", str(home)], env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def refused(result: Result, *messages: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr carrying each of `messages`."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


def the_record(home: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the central database."""
    engine = connect(url_for_home(home))
    try:
        tables = sa.MetaData()
        tables.reflect(engine)
        with engine.connect() as connection:
            return {
                name: sorted(map(tuple, connection.execute(sa.select(table))), key=repr)
                for name, table in tables.tables.items()
            }
    finally:
        engine.dispose()


def example() -> str:
    return ok(CliRunner().invoke(app, ["governance", "example"]))


def person(home: Path, handle: str, org: str | None, *roles: str, by: str = "admin") -> None:
    args = ["person", "add", handle, "--name", handle.title(), "--email", f"{handle}@example.org"]
    args += ["--org", org] if org else []
    args += ["--as", by] if by else []
    for role in roles:
        args += ["--role", role]
    assert f"{handle} (" in ok(gpdpr(home, *args))


def populate(home: Path) -> None:
    """The example's organisations, two applicants from Leeds, an administrator, four
    independent panel members and one from Leeds."""
    home.mkdir(parents=True, exist_ok=True)  # central commands refuse a home that is not there
    person(home, "admin", None, "administrator", by="")  # the first: added by no one
    for name, kind in ((LEEDS, "university"), (ICB, "nhs_body"), (TRUST, "charity")):
        added = ok(gpdpr(home, "org", "add", name, "--kind", kind, "--as", "admin"))
        assert f"organisation {name!r} added" in added
    person(home, "a.khan", LEEDS, "applicant")
    person(home, "s.patel", LEEDS, "applicant")
    for member in PANEL:
        person(home, member, None, "panel_member")
    person(home, "m.leeds", LEEDS, "panel_member")


@dataclass(frozen=True)
class Built:
    people: Path  # a home with everyone in `populate`
    review: Path  # and the example application under review, m.one's vote cast
    reference: str


def put_under_review(home: Path, folder: Path) -> str:
    """Apply with the example, submit, start the review and cast m.one's vote; the reference."""
    reference = apply(home, write(folder, "application.toml", example()))
    ok(gpdpr(home, "submit", reference, "--as", "a.khan"))
    ok(gpdpr(home, "review", "start", reference, "--as", "admin"))
    ok(gpdpr(home, "review", "vote", reference, "approve", "--as", "m.one"))
    return reference


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Made once through the CLI and copied for each test (a home is a folder and a file)."""
    folder = tmp_path_factory.mktemp("governance")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolated(monkeypatch)
        populate(folder / "people")
        shutil.copytree(folder / "people", folder / "review")
        reference = put_under_review(folder / "review", folder)
    return Built(folder / "people", folder / "review", reference)


@pytest.fixture
def home(built: Built, tmp_path: Path) -> Path:
    """A service with the people of `populate` and no application yet."""
    return Path(shutil.copytree(built.people, tmp_path / "home"))


def apply(home: Path, form: Path, actor: str = "a.khan") -> str:
    """Save `form` as a draft; its reference."""
    out = ok(gpdpr(home, "apply", str(form), "--as", actor))
    found = re.search(r"draft (APP-\d{4}-\d{4}) saved", out)
    assert found, out
    assert f"gpdpr governance submit {found[1]} --as {actor}" in out
    return found[1]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def form(tmp_path: Path) -> Path:
    return write(tmp_path, "application.toml", example())


@pytest.fixture
def under_review(home: Path, built: Built) -> str:
    """`home` now holds the example application, under review with m.one's vote cast."""
    shutil.rmtree(home)
    shutil.copytree(built.review, home)
    return built.reference


def state(home: Path, reference: str) -> str:
    shown = ok(gpdpr(home, "show", reference))
    return re.search(r"^state: (.*)$", shown, re.M)[1]  # type: ignore[index]


def test_the_example_is_an_application_the_checks_accept(home: Path, form: Path) -> None:
    reference = apply(home, form)
    assert state(home, reference) == "Draft: being written by the applicant"
    out = ok(gpdpr(home, "submit", reference, "--as", "a.khan"))
    assert f"{reference} submitted" in out and "Nothing was flagged" in out
    assert f"gpdpr governance review start {reference}" in out
    shown = ok(gpdpr(home, "show", reference))
    assert "state: Submitted: awaiting review" in shown
    assert "Research" in shown and "Art. 9(2)(j)" in shown
    assert "records: from 2015-01-01 to 2025-12-31" in shown
    assert "National Data Opt-out: applied" in shown
    for org, role in ((LEEDS, "lead"), (ICB, "collaborator"), (TRUST, "funder")):
        assert re.search(rf"{org}\s.*\s{role}\s", shown), org
    assert "s.patel" in shown and "a.khan" in shown  # the team
    # one justification asked for five fields at once; each keeps it, as one paragraph
    events = [line for line in shown.splitlines() if "clinical_events." in line]
    assert len(events) == 5 and all("Diagnoses, HbA1c and blood pressure" in e for e in events)
    listed = ok(gpdpr(home, "applications", "--state", "submitted"))
    assert reference in listed
    assert reference not in ok(gpdpr(home, "applications", "--state", "draft"))


@pytest.fixture(params=BACKENDS)
def review_home(
    request: pytest.FixtureRequest, built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, str]]:
    """A home with the example under review (m.one's vote cast), its record in the home's
    SQLite file, or on PostgreSQL in a schema of its own (GPDPR_DATABASE_URL)."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        yield Path(shutil.copytree(built.review, home)), built.reference
        return
    with postgres_url() as url:
        monkeypatch.setenv(DATABASE_URL_ENV, url)
        populate(home)
        yield home, put_under_review(home, tmp_path)


def test_from_application_to_a_revoked_agreement(
    review_home: tuple[Path, str], tmp_path: Path
) -> None:
    home, ref = review_home
    # m.one voted, then declares a conflict: the vote is struck out
    out = ok(gpdpr(home, "review", "conflict", ref, "--as", "m.one", "--reason", "co-author"))
    assert "m.one will not vote" in out and "vote was struck out" in out
    refused(
        gpdpr(home, "review", "vote", ref, "approve", "--as", "m.one"),
        "m.one cannot vote",
        "declared a conflict of interest (co-author)",
    )
    # a member from the applicant's own university cannot vote either
    refused(
        gpdpr(home, "review", "vote", ref, "approve", "--as", "m.leeds"),
        f"they belong to {LEEDS}, which is on the application",
    )
    out = ok(gpdpr(home, "review", "vote", ref, "approve", "--as", "m.two", "--comment", "Good"))
    assert "1 counted vote(s) so far" in out
    ok(gpdpr(home, "review", "vote", ref, "refuse", "--as", "m.three"))
    minutes = write(tmp_path, "minutes.txt", "The panel approved, 2 to 1.\n")
    refused(
        gpdpr(home, "review", "decide", ref, "--as", "admin", "--minutes-file", str(minutes)),
        f"cannot decide {ref} yet: 2 of the 3 votes",
    )
    ok(gpdpr(home, "review", "vote", ref, "approve", "--as", "m.four"))
    out = ok(
        gpdpr(
            home, "review", "decide", ref, "--as", "admin", "--minutes-file", str(minutes),
            "--condition", "No counts under 10 leave the environment",
        )
    )  # fmt: skip
    assert f"{ref} approved by the panel (2 for, 1 against, quorum 3)" in out
    assert "condition: No counts under 10" in out
    assert f"gpdpr governance agreement issue {ref} --as admin" in out

    out = ok(gpdpr(home, "agreement", "issue", ref, "--as", "admin"))
    dsa = re.search(r"agreement (DSA-\d{4}-\d{4}) issued", out)[1]  # type: ignore[index]

    # a named researcher may use what was approved, and is told the scope
    wanted = ["--item", "patients.imd_decile", "--item", "clinical_events.value"]
    out = ok(gpdpr(home, "agreement", "check", dsa, "--as", "s.patel", *wanted))
    assert out.startswith(f"allowed: s.patel may use under {dsa} (application {ref})")
    assert "  patients: birth_year, imd_decile, patient, region_code, sex\n" in out
    assert "records from 2015-01-01 to 2025-12-31" in out
    assert "aged 18 to any; regions E12000003, E12000002" in out
    assert "National Data Opt-out applied" in out
    # but nothing outside the scope, and no one outside the team
    refused(
        gpdpr(
            home, "agreement", "check", dsa, "--as", "s.patel", "--item", "patients.postcode_key"
        ),
        f"no access under {dsa} to patients.postcode_key: outside the agreement's scope",
    )
    refused(
        gpdpr(home, "agreement", "check", dsa, "--as", "m.two", "--item", "patients.sex"),
        "m.two is not named on its team",
    )

    shown = ok(gpdpr(home, "show", ref))
    assert "state: Agreement active" in shown
    assert "minutes: The panel approved, 2 to 1." in shown
    assert "condition: No counts under 10 leave the environment" in shown
    assert f"reference: {dsa}" in shown and "status: active" in shown
    assert "m.one: co-author" in shown  # the conflict
    votes = {m: v for m, v in re.findall(r"(m\.\w+)\s+│ (approve|refuse)", shown)}
    assert votes == {"m.two": "approve", "m.three": "refuse", "m.four": "approve"}

    out = ok(gpdpr(home, "agreement", "revoke", dsa, "--as", "admin", "--reason", "breach"))
    assert f"agreement {dsa} revoked" in out
    refused(
        gpdpr(home, "agreement", "check", dsa, "--as", "s.patel", "--item", "patients.sex"),
        f"no access under {dsa}: it was revoked on",
        "(breach)",
    )
    assert state(home, ref) == "Agreement revoked"
    assert ref in ok(gpdpr(home, "applications", "--state", "revoked"))


def test_the_register_is_written_from_the_record(
    home: Path, under_review: str, tmp_path: Path
) -> None:
    for member in PANEL[1:]:
        ok(gpdpr(home, "review", "vote", under_review, "approve", "--as", member))
    ok(gpdpr(home, "review", "decide", under_review, "--as", "admin", "--minutes", "Approved."))
    ok(gpdpr(home, "agreement", "issue", under_review, "--as", "admin"))
    out = ok(gpdpr(home, "register", "--out", str(tmp_path / "public")))
    named = re.findall(r"^  \w+: (.+)$", out, re.M)
    assert named, out
    for path in map(Path, named):
        assert path.parent == tmp_path / "public" and path.stat().st_size > 0
    ok(gpdpr(home, "register"))
    assert (home / "register").is_dir()


def test_an_agreement_is_not_in_force_before_its_start(
    home: Path, under_review: str, tmp_path: Path
) -> None:
    for member in PANEL[1:]:
        ok(gpdpr(home, "review", "vote", under_review, "approve", "--as", member))
    ok(gpdpr(home, "review", "decide", under_review, "--as", "admin", "--minutes", "Approved."))
    today = datetime.now(UTC).date()
    start, end = today + timedelta(days=7), today + timedelta(days=30)
    refused(
        gpdpr(home, "agreement", "issue", under_review, "--as", "admin", "--start", "next week"),
        "--start must be a date like",
    )
    out = ok(
        gpdpr(
            home, "agreement", "issue", under_review, "--as", "admin",
            "--start", start.isoformat(), "--end", end.isoformat(),
        )
    )  # fmt: skip
    assert f"access from {start} until {end}" in out
    dsa = re.search(r"agreement (DSA-\d{4}-\d{4}) issued", out)[1]  # type: ignore[index]
    refused(
        gpdpr(home, "agreement", "check", dsa, "--as", "a.khan"),
        f"no access under {dsa}: it starts on {start}",
    )


def test_the_panel_can_refuse_and_the_quorum_can_be_set(home: Path, under_review: str) -> None:
    ok(gpdpr(home, "review", "vote", under_review, "refuse", "--as", "m.two"))
    decide = ["review", "decide", under_review, "--as", "admin", "--minutes", "Refused."]
    refused(gpdpr(home, *decide), "2 of the 3 votes a quorum needs")
    out = ok(gpdpr(home, *decide, env={"GPDPR_PANEL_QUORUM": "2"}))
    assert f"{under_review} refused by the panel (1 for, 1 against, quorum 2)" in out
    assert state(home, under_review) == "Refused"
    refused(
        gpdpr(home, "agreement", "issue", under_review, "--as", "admin"),
        f"cannot issue an agreement for {under_review}: it is refused",
    )


def test_an_excluded_purpose_is_refused_on_submission(home: Path, tmp_path: Path) -> None:
    text = example().replace("uses_for_marketing = false", "uses_for_marketing = true")
    reference = apply(home, write(tmp_path, "marketing.toml", text))
    out = ok(gpdpr(home, "submit", reference, "--as", "a.khan"))
    assert f"{reference} refused by the automatic checks: Marketing is excluded" in out
    assert state(home, reference) == "Refused"
    assert "why: Marketing is excluded" in ok(gpdpr(home, "show", reference))


def test_a_draft_is_edited_then_withdrawn(home: Path, form: Path, tmp_path: Path) -> None:
    reference = apply(home, form)
    changed = example().replace('title = "Diabetes care', 'title = "Type 2 diabetes care')
    out = ok(
        gpdpr(home, "edit", reference, str(write(tmp_path, "v2.toml", changed)), "--as", "a.khan")
    )
    assert f"draft {reference} updated" in out
    assert "Type 2 diabetes care and deprivation" in ok(gpdpr(home, "show", reference))
    refused(
        gpdpr(home, "withdraw", reference, "--as", "s.patel", "--reason", "mine now"),
        "only its lead applicant, a.khan, can",
    )
    ok(gpdpr(home, "withdraw", reference, "--as", "a.khan", "--reason", "funding ended"))
    assert state(home, reference) == "Withdrawn by the applicant"
    refused(
        gpdpr(home, "submit", reference, "--as", "a.khan"),
        f"cannot submit {reference}: it is withdrawn",
    )


def test_people_and_organisations_are_listed(home: Path) -> None:
    orgs = ok(gpdpr(home, "orgs"))
    assert all(name in orgs for name in (LEEDS, ICB, TRUST))
    assert "University or academic institution" in orgs
    listed = ok(gpdpr(home, "people"))
    assert re.search(r"a\.khan\s.*University of Leeds\s.*applicant", listed)
    assert re.search(r"admin\s.*administrator", listed)
    add = ["person", "add", "x.y", "--name", "X", "--email", "x@y.org"]
    refused(
        gpdpr(home, *add, "--role", "king", "--as", "admin"),
        "roles must be some of applicant, panel_member",
    )
    refused(
        gpdpr(home, *add, "--role", "administrator", "--as", "a.khan"),
        "a.khan cannot add people: that needs the administrator role",
    )
    refused(
        gpdpr(home, *add, "--role", "administrator"),
        "only an administrator adds people",
    )


# Refusals: each on one line with exit code 2, and the record exactly as it was.

BAD_TOML = 'title = "A study"\npurpose_category = "research"\nlay_summary = "unfinished\n'


@pytest.mark.parametrize(
    ("case", "messages"),
    [
        ("malformed TOML", ["bad.toml: not valid TOML", "line 3"]),
        ("unknown key", ["bad.toml: titel: unknown key (did you mean 'title'?)"]),
        ("wrong type", ['bad.toml: duration_months: should be a whole number (got "two years")']),
        (
            "item outside the specification",
            ["bad.toml: data item patients.nhs_number", "does not collect 'nhs_number'"],
        ),
        ("unknown table", ["bad.toml: data item prescriptions.code: there is no table"]),
        ("impossible population", ["bad.toml: population: min_age 70 is above max_age 18"]),
        ("unknown handle", ["no one has the handle 'nobody'"]),
        ("without the role", ["m.two cannot make an application: that needs the applicant role"]),
        ("unknown team member", ["no one has the handle 's.pate'"]),
        ("missing file", ["nowhere.toml: no such file"]),
    ],
)
def test_a_bad_application_is_refused_and_nothing_is_saved(
    home: Path, tmp_path: Path, case: str, messages: list[str]
) -> None:
    text, actor, name = example(), "a.khan", "bad.toml"
    if case == "malformed TOML":
        text = BAD_TOML
    elif case == "unknown key":
        text = text.replace("title =", "titel =")
    elif case == "wrong type":
        text = text.replace("duration_months = 24", 'duration_months = "two years"')
    elif case == "item outside the specification":
        text += '\n[[items]]\ntable = "patients"\nfield = "nhs_number"\njustification = "x"\n'
    elif case == "unknown table":
        text += '\n[[items]]\ntable = "prescriptions"\nfield = "code"\n'
    elif case == "impossible population":
        text = text.replace("min_age = 18", "min_age = 70\nmax_age = 18")
    elif case == "unknown handle":
        actor = "nobody"
    elif case == "without the role":
        actor = "m.two"
    elif case == "unknown team member":
        text = text.replace('team = ["s.patel"]', 'team = ["s.pate"]')
    path = write(tmp_path, name, text) if case != "missing file" else tmp_path / "nowhere.toml"
    before = the_record(home)
    refused(gpdpr(home, "apply", str(path), "--as", actor), *messages)
    assert the_record(home) == before
    assert "No applications yet" in ok(gpdpr(home, "applications"))


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (
            ["review", "vote", "{ref}", "refuse", "--as", "m.one"],
            ["m.one has already voted on {ref}: each member votes once"],
        ),
        (
            ["review", "start", "{ref}", "--as", "a.khan"],
            ["a.khan cannot start a review: that needs the administrator role"],
        ),
        (
            ["review", "vote", "{ref}", "approve", "--as", "admin"],
            ["admin cannot vote: that needs the panel member role, and they have administrator"],
        ),
        (["review", "vote", "{ref}", "maybe", "--as", "m.two"], ["approve or refuse"]),
        (["review", "vote", "{ref}", "approve", "--as", "m.nobody"], ["no one has the handle"]),
        (
            ["review", "decide", "{ref}", "--as", "admin", "--minutes", "x", "--minutes-file", "m"],
            ["--minutes TEXT or --minutes-file FILE (one of them)"],
        ),
        (
            ["review", "decide", "{ref}", "--as", "admin", "--minutes", "  ", "--quorum", "1"],
            ["a decision needs its minutes"],
        ),
        (
            ["review", "conflict", "{ref}", "--as", "m.two", "--reason", " "],
            ["say what the conflict of interest is"],
        ),
        (
            ["edit", "{ref}", "nowhere.toml", "--as", "a.khan"],
            ["nowhere.toml: no such file"],
        ),
        (["submit", "{ref}", "--as", "a.khan"], ["cannot submit {ref}: it is under review"]),
        (["agreement", "issue", "{ref}", "--as", "admin"], ["it is under review"]),
        (
            ["agreement", "check", "DSA-2026-0001", "--as", "s.patel", "--item", "patients"],
            ["--item 'patients' should be TABLE.FIELD"],
        ),
        (["show", "APP-1999-0001"], ["no application 'APP-1999-0001'"]),
        (["applications", "--state", "pending"], ["--state must be one of draft, submitted"]),
    ],
)
def test_a_refused_move_changes_nothing(
    home: Path, under_review: str, args: list[str], messages: list[str]
) -> None:
    before, shown = the_record(home), ok(gpdpr(home, "show", under_review))
    refused(
        gpdpr(home, *(a.format(ref=under_review) for a in args)),
        *(m.format(ref=under_review) for m in messages),
    )
    assert the_record(home) == before
    assert ok(gpdpr(home, "show", under_review)) == shown


def test_an_incomplete_application_stays_a_draft(home: Path, tmp_path: Path) -> None:
    text = 'title = "Asthma reviews"\npurpose_category = "service_planning"\n'
    reference = apply(home, write(tmp_path, "short.toml", text))
    before = the_record(home)
    refused(
        gpdpr(home, "submit", reference, "--as", "a.khan"),
        f"{reference} is not complete, so it stays a draft",
        "lay_summary: fill it in",
        "items: the data items needed",
    )
    assert the_record(home) == before
    assert state(home, reference) == "Draft: being written by the applicant"


def test_the_example_is_plain_toml_on_stdout() -> None:
    text = example()
    assert text.startswith("# An application for access to GP data")
    assert "\n[population]\n" in text and "\n[[items]]\n" in text  # not eaten as Rich markup
    assert "\x1b" not in text


def test_messages_show_what_was_typed_even_with_brackets(home: Path) -> None:
    args = ["person", "add", "j.doe", "--name", "J", "--email", "j@x.org", "--role", "applicant"]
    args += ["--as", "admin"]
    refused(
        gpdpr(home, *args, "--org", "[bold]Nowhere"),
        "no organisation called '[bold]Nowhere': add it first (gpdpr governance org add)",
    )
