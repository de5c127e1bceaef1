"""The application form as a task list over HTTP, on both databases: each section its own short
page saved to the draft on the server, a status a section, errors naming the field with nothing
lost, a check-your-answers page, and submission through the same automatic checks."""

# ruff: noqa: F811
from __future__ import annotations

import html
import re

from fastapi.testclient import TestClient

from governing import CHARITY, COLLEAGUE, LEAD, VENDOR, snapshot
from gpdpr.portal.applications import readable_items
from gpdpr.spec import shipped

# The portal fixture (one built home a database) is shared with test_portal: imported, so a
# test naming it as an argument "redefines" it as far as ruff can tell.
from test_portal import Portal, portal, post, staff  # noqa: F401

ABOUT = {
    "title": "Falls in care homes",
    "purpose_category": "research",
    "lay_summary": "How often do people in care homes fall?",
    "technical_summary": "Fall codes by age band.",
    "expected_benefit": "Fewer falls.",
}


def statuses(page: str) -> dict[str, str]:
    found = re.findall(
        r'<a href="/applications/[^/]+/edit/(\w+)"[^>]*>[^<]*</a>\s*<strong[^>]*>([^<]+)<', page
    )
    return dict(found)


def start(lead: TestClient) -> str:
    made = post(lead, "/applications/new", "/applications/new", step="about", **ABOUT)
    assert made.status_code == 303, made.text
    location: str = made.headers["location"]
    assert location.endswith("/edit")
    return location.removesuffix("/edit")


def test_an_applicant_fills_the_sections_in_any_order_checks_and_submits(portal: Portal) -> None:
    lead = staff(portal, LEAD)
    first = lead.get("/applications/new").text
    assert first.count("<h1") == 1 and "About the project</h1>" in first
    assert 'name="items"' not in first  # one short page, not the whole form
    app = start(lead)
    tasks = lead.get(f"{app}/edit").text
    assert statuses(tasks) == {
        "about": "Completed",
        "purpose": "Not started",
        "team": "Completed",  # the lead alone, until others are named (see the next test)
        "items": "Not started",
        "population": "Not started",
    }
    population = {"data_from": "2018-01-01", "data_to": "2024-12-31", "min_age": "65"}
    assert (
        post(lead, f"{app}/edit/population", f"{app}/edit/population", **population).status_code
        == 303
    )
    items = {"items": ["patients.patient"], "why.patients.patient": ""}
    assert post(lead, f"{app}/edit/items", f"{app}/edit/items", **items).status_code == 303
    purpose = {"legal_basis": "public_task_research", "duration_months": "6"}
    assert post(lead, f"{app}/edit/purpose", f"{app}/edit/purpose", **purpose).status_code == 303
    assert statuses(lead.get(f"{app}/edit").text) == {
        "about": "Completed",
        "purpose": "Completed",
        "team": "Completed",
        "items": "In progress",  # an item without its reason
        "population": "Completed",
    }
    # each step kept what the others saved
    check = html.unescape(lead.get(f"{app}/check").text)
    for shown in ("Falls in care homes", "2018-01-01", "65 to any", "6 months", "patients.patient"):
        assert shown in check
    assert check.count("<h1") == 1 and f'action="{app}/submit"' in check
    why = {"items": ["patients.patient"], "why.patients.patient": "to count people once"}
    post(lead, f"{app}/edit/items", f"{app}/edit/items", **why)
    submitted = post(lead, f"{app}/submit", f"{app}/check")
    assert submitted.status_code == 303
    assert "is submitted" in lead.get(app).text
    assert lead.get(f"{app}/edit").status_code == 404  # only a draft has a task list


def team_hint(page: str) -> str:
    found = re.search(r'<span id="hint-team" class="task-hint">([^<]+)</span>', page)
    assert found is not None, "the task list says nothing of the team"
    return html.unescape(found.group(1))


def test_the_team_sections_status_says_which_team_the_draft_holds(portal: Portal) -> None:
    """The lead alone is a whole answer (naming others is optional), so the team is never "not
    started"; what is beside the status follows what was saved, both ways."""
    lead = staff(portal, LEAD)
    app = start(lead)
    tasks = lead.get(f"{app}/edit").text
    assert statuses(tasks)["team"] == "Completed"
    assert team_hint(tasks).startswith("Only you")
    assert 'aria-describedby="status-team hint-team"' in tasks  # read out with the link
    team = {"team": COLLEAGUE, "collaborators": [], "funders": [CHARITY]}
    assert post(lead, f"{app}/edit/team", f"{app}/edit/team", **team).status_code == 303
    tasks = lead.get(f"{app}/edit").text
    assert team_hint(tasks) == "You and 1 other named researcher, 1 funder"
    assert statuses(tasks)["team"] == "Completed"
    # emptied again on purpose: the draft holds the lead alone, and the list says so
    assert post(lead, f"{app}/edit/team", f"{app}/edit/team", team="").status_code == 303
    assert team_hint(lead.get(f"{app}/edit").text).startswith("Only you")
    assert COLLEAGUE not in html.unescape(lead.get(f"{app}/check").text)


def test_a_bad_step_is_refused_naming_the_field_keeps_what_was_typed_and_saves_nothing(
    portal: Portal,
) -> None:
    lead = staff(portal, LEAD)
    app = start(lead)
    lead.get(f"{app}/edit")  # shows, and so clears, the "saved as a draft" message
    before = snapshot(portal.built.engine)
    bad = {
        "items": ["patients.patient", "patients.name"],
        "why.patients.patient": "typed and kept",
        "why.patients.name": "x",
    }
    refused = post(lead, f"{app}/edit/items", f"{app}/edit/items", **bad)
    assert refused.status_code == 400
    text = html.unescape(refused.text)
    assert "'patients.name': no research run can read it" in text
    assert "typed and kept" in text
    assert snapshot(portal.built.engine) == before
    dates = post(lead, f"{app}/edit/population", f"{app}/edit/population", data_from="2018-02-30")
    assert dates.status_code == 400 and "Records from" in dates.text
    assert 'value="2018-02-30"' in dates.text
    assert snapshot(portal.built.engine) == before
    # a section that is not one, and a field another step owns, change nothing
    assert post(lead, f"{app}/edit/secrets", f"{app}/edit").status_code == 404
    post(lead, f"{app}/edit/team", f"{app}/edit/team", title="Sneaked in")
    assert "Falls in care homes" in lead.get(f"{app}/check").text


def test_the_items_step_offers_only_what_a_run_can_read_grouped_by_table(portal: Portal) -> None:
    lead = staff(portal, LEAD)
    app = start(lead)
    page = lead.get(f"{app}/edit/items").text
    offered = set(re.findall(r'name="items" value="([^"]+)"', page))
    specified = {f"{t.name}.{f.name}" for t in shipped().tables.values() for f in t.fields}
    assert offered == readable_items() & specified and "patients.name" not in offered
    assert page.count("<fieldset") == len({item.split(".")[0] for item in offered})


def test_only_the_lead_sees_the_steps_of_a_draft(portal: Portal) -> None:
    app = start(staff(portal, LEAD))
    other = staff(portal, VENDOR)
    for path in ("/edit", "/edit/about", "/check"):
        assert other.get(f"{app}{path}").status_code == 404, path
    before = snapshot(portal.built.engine)
    assert post(other, f"{app}/edit/about", "/applications", **ABOUT).status_code == 404
    assert snapshot(portal.built.engine) == before


def test_what_an_applicant_types_is_escaped_on_the_task_list_and_check_pages(
    portal: Portal,
) -> None:
    lead = staff(portal, LEAD)
    canary = '<script>alert("canary")</script>'
    made = post(
        lead, "/applications/new", "/applications/new", step="about", **{**ABOUT, "title": canary}
    )
    app = made.headers["location"].removesuffix("/edit")
    for path in ("/edit", "/check", "/edit/about"):
        page = lead.get(f"{app}{path}").text
        assert canary not in page and "&lt;script&gt;" in page, path
