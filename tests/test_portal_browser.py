"""The portal in a real browser: Debian's Chromium, headless, driven by Playwright, against the
real server (uvicorn on 127.0.0.1) over a real service home. One server and one browser for the
module. Screenshots go to tests/artefacts/portal/ (kept as test artefacts, not committed).

Scenarios: a patient signs in and opts out; after the erasure cycle the activity log shows the
erasure, with its proof; an applicant submits an application; the panel votes to quorum and the
administrator decides; two output checkers release a file; the register shows it; a checker reads
a request (a table and a measure's chart, each cell's status) at desktop and phone width. Then
keyboard use and basic accessibility on every page: labels, one h1 and no skipped heading level,
text contrast of at least 4.5:1 from the computed styles, a visible focus, and a skip link that
works.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, FilePayload, Page, sync_playwright

from governing import ADMIN, CHECKERS, LEAD, PANEL, act, form
from gpdpr.portal.app import create_app
from gpdpr.portal.applications import SECTIONS
from gpdpr.portal.security import RateLimit
from gpdpr.portal.serve import publish_now, running
from gpdpr.tre import runs
from gpdpr.tre.release import checking
from portal_home import FAST, MEASURED, PASSWORD, STUDY, Home, build, database, patient_email

ARTEFACTS = Path(__file__).parent / "artefacts" / "portal"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Site:
    built: Home
    url: str
    browser: Browser
    request: str  # a release request awaiting two checkers
    app: FastAPI
    measured: str  # another, of a table and a measure, that stays awaiting review


def asked_for(built: Home, folder: Path, text: str, title: str) -> str:
    """Run the study `text` under the agreement and ask for all its outputs; the request."""
    (folder / "study.py").write_text(text)
    made = runs.submit(built.home, LEAD, built.agreement, runs.compile_file(folder / "study.py"))
    outputs = made.folder / runs.OUTPUTS
    files = {
        name: (hashlib.sha256((outputs / name).read_bytes()).hexdigest(), about["bytes"])
        for name, about in made.outputs.items()
    }
    cells = runs.cells_of(built.home, made.reference, set(files))
    reference: str = act(
        built.engine,
        lambda s: (
            checking.request_release(
                s, LEAD, made.reference, files, title, "For the browser test.", cells
            ).reference
        ),
    )
    return reference


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with database("sqlite"):
        built = build(tmp_path_factory.mktemp("browser"))
        request = asked_for(built, tmp_path_factory.mktemp("study"), STUDY, "Adults by sex")
        measured = asked_for(built, tmp_path_factory.mktemp("measured"), MEASURED, "Events")
        app = create_app(built.home, passwords=FAST, rate_limit=RateLimit(), dummy_patients=400)
        publish_now(app)  # the transparency log, as the served portal keeps it
        with running(app) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                yield Site(built, url, browser, request, app, measured)
            finally:
                browser.close()
                app.state.portal.close()
                built.engine.dispose()
    print(f"\nportal screenshots: {ARTEFACTS}")


@pytest.fixture
def page(site: Site) -> Iterator[Page]:
    context = site.browser.new_context(base_url=site.url, viewport={"width": 1100, "height": 900})
    made = context.new_page()
    yield made
    context.close()


def shot(page: Page, name: str) -> None:
    # generous: on a loaded machine a long page's full screenshot has taken over 30 s
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True, timeout=180_000)


def sign_in(page: Page, handle: str) -> None:
    page.goto("/sign-in")
    page.get_by_label("Handle").fill(handle)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    assert f"Signed in as {handle}" in page.content()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()


# ---- the scenarios -----------------------------------------------------------------------------


def test_a_patient_signs_in_with_the_identity_provider_opts_out_and_sees_it(page: Page) -> None:
    page.goto("/")
    page.get_by_role("link", name="Sign in to see or change your opt-outs").click()
    page.get_by_label("Email address").fill(patient_email(1))
    page.get_by_label("Password").fill(PASSWORD)
    shot(page, "01-identity-provider")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/patient")
    page.get_by_role("button", name="Set my Type 1 opt-out").click()
    page.wait_for_load_state()
    status = page.get_by_role("status").first.inner_text()
    assert "Your Type 1 opt-out is recorded" in status
    assert "erased at the next erasure cycle" in status
    assert page.get_by_role("button", name="Withdraw my Type 1 opt-out").is_visible()
    shot(page, "02-patient-opted-out")


def test_the_erasure_shows_in_the_activity_log_after_the_cycle_with_its_proof(
    page: Page, site: Site
) -> None:
    from gpdpr.collect.service import Central, erase_cycle

    page.goto("/patient/sign-in")
    page.get_by_label("Email address").fill(patient_email(3))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/patient")
    page.get_by_role("button", name="Set my Type 1 opt-out").click()
    page.wait_for_load_state()
    assert "Your Type 1 opt-out is recorded" in page.get_by_role("status").first.inner_text()
    # the service's erasure cycle, then its publishing to the log (as `gpdpr erase` does)
    cycle = erase_cycle(Central(site.built.home))
    assert cycle.receipts >= 1 and cycle.erasure.version is not None
    publish_now(site.app)
    page.goto("/log")
    assert "The log verifies" in page.get_by_role("status").first.inner_text()
    page.get_by_label("Type of entry").select_option("erasure")
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    rows = page.locator("table.log tbody tr")
    assert rows.count() >= 1
    newest = rows.first.inner_text()
    assert "Erasure cycle" in newest and f"Lake version: {cycle.erasure.version.number}" in newest
    assert all("Erasure cycle" in rows.nth(n).inner_text() for n in range(rows.count()))
    shot(page, "07-log-erasure")
    rows.first.get_by_role("link").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text().endswith("Erasure cycle")
    assert page.get_by_role("heading", name="Proof that it is in the signed log").is_visible()
    assert "gpdpr log prove" in page.locator("main").inner_text()
    shot(page, "08-log-entry-with-proof")


def test_an_applicant_fills_in_and_submits_an_application(page: Page) -> None:
    sign_in(page, LEAD)
    page.goto("/applications/new")
    page.get_by_label("Title").fill("Heart failure and home visits")
    page.get_by_label("Purpose").select_option("service_planning")
    page.get_by_label("Summary in plain words (published)").fill(
        "How many people with heart failure need home visits, by area."
    )
    page.get_by_label("Technical summary, for the panel").fill("Counts by region and year.")
    page.get_by_label("Expected benefit to health and care").fill("Better planned home visits.")
    save = page.get_by_role("button", name="Save and return to the task list")
    save.click()
    page.wait_for_load_state()
    assert "is saved as a draft" in page.content()
    page.get_by_role("link", name="Purpose and legal basis").click()
    page.get_by_label("Legal basis").select_option("public_task_health_care")
    save.click()
    page.get_by_role("link", name="The population and period").click()
    page.get_by_label("Records from (date)").fill("2016-01-01")
    page.get_by_label("Records to (date)").fill("2025-12-31")
    save.click()
    page.get_by_role("link", name="The data items asked for").click()
    page.locator("#item-patients\\.patient").check()
    page.get_by_label("Why patient is needed").first.fill("to count people once")
    page.locator("#item-patients\\.region_code").check()
    page.locator("#why-patients\\.region_code").fill("planning is by region")
    save.click()
    page.wait_for_load_state()
    assert page.locator("#status-items").inner_text() == "Completed"
    page.get_by_role("link", name="Check your answers and submit").click()
    assert "planning is by region" in page.locator("main").inner_text()
    page.get_by_role("button", name="Submit to the panel").click()
    page.wait_for_load_state()
    assert "is submitted. The panel will review it." in page.content()
    shot(page, "03-application-submitted")


def test_the_panel_votes_to_quorum_and_the_administrator_approves(page: Page, site: Site) -> None:
    from governing import bring_to

    reference = bring_to(site.built.engine, "submitted")
    sign_in(page, ADMIN)
    page.goto(f"/applications/{reference}")
    page.get_by_role("button", name="Start the panel's review").click()
    page.wait_for_load_state()
    sign_out(page)
    for member in PANEL:
        sign_in(page, member)
        page.goto(f"/applications/{reference}")
        page.get_by_label("Approve").check()
        page.get_by_label("Comment (optional)").fill("Proportionate and useful.")
        page.get_by_role("button", name="Cast my vote").click()
        page.wait_for_load_state()
        assert "Your vote is recorded" in page.content()
        sign_out(page)
    sign_in(page, ADMIN)
    page.goto(f"/applications/{reference}")
    page.get_by_label("Minutes (published)").fill("Approved unanimously; proportionate.")
    page.get_by_label("Conditions, one a line (approvals only)").fill("Aggregate outputs only")
    page.get_by_role("button", name="Record the panel's decision").click()
    page.wait_for_load_state()
    page.get_by_role("button", name="Issue the data sharing agreement").click()
    page.wait_for_load_state()
    assert "Agreement active" in page.content()
    shot(page, "04-panel-approved")


def test_two_checkers_release_a_file_and_the_register_publishes_it(page: Page, site: Site) -> None:
    for checker in CHECKERS:
        sign_in(page, checker)
        page.goto("/checking")
        page.get_by_role("link", name=site.request).first.click()
        page.get_by_label("Approve").first.check()
        page.get_by_role("button", name="Record my review of table_adults_by_sex.csv").click()
        page.wait_for_load_state()
        sign_out(page)
    page.goto("/register")
    entry = page.get_by_role("link", name="table_adults_by_sex.csv")
    assert entry.count() >= 1
    shot(page, "05-register-with-release")
    with page.expect_download() as download:
        entry.first.click()
    assert download.value.suggested_filename == "table_adults_by_sex.csv"
    # the question in words beside it, and the definition written out as the language
    question = page.locator(".question").first
    assert "how many people are in each group of sex (adults_by_sex)" in question.inner_text()
    question.get_by_text("Read it as the query language").click()  # opens where it is
    text = question.locator("pre").inner_text()
    assert "dataset.add_table('adults_by_sex', by=['sex'])  # study.py:" in text
    assert "from gpdpr.tre.language import *" in text


# ---- keyboard and accessibility ----------------------------------------------------------------

PUBLIC_PAGES = [
    "/",
    "/what-we-collect",
    "/safeguards",
    "/register",
    "/statistics",
    "/opting-out",
    "/log",
    "/log/entries/0",
    "/log/verify",
]
SIGNED_IN_PAGES = {
    LEAD: ["/applications", "/applications/new", "/research"],
    ADMIN: ["/panel", "/admin"],
    CHECKERS[0]: ["/checking"],
}

AUDIT = """
() => {
  const problems = [];
  const visible = (e) => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
  for (const input of document.querySelectorAll('input, select, textarea')) {
    if (input.type === 'hidden' || !visible(input)) continue;
    const labelled = (input.id && document.querySelector(`label[for="${input.id}"]`))
      || input.closest('label') || input.getAttribute('aria-label')
      || input.getAttribute('aria-labelledby');
    if (!labelled) problems.push(`input ${input.name || input.id} has no label`);
  }
  const headings = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')];
  const h1s = headings.filter(h => h.tagName === 'H1').length;
  if (h1s !== 1) problems.push(`${h1s} h1 elements`);
  let level = 0;
  for (const h of headings) {
    const now = Number(h.tagName[1]);
    if (now > level + 1) {
      problems.push(`heading level skipped: h${level} then h${now} "${h.textContent.trim()}"`);
    }
    level = now;
  }
  const rgb = (text) => {
    const m = text.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(',').map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const lum = (c) => {
    const f = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const background = (e) => {
    for (let n = e; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c && c.a > 0) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const e = node.parentElement;
    if (!node.textContent.trim() || !e || seen.has(e) || !visible(e)) continue;
    if (e.closest('svg')) continue;
    seen.add(e);
    const style = getComputedStyle(e);
    const fg = rgb(style.color), bg = background(e);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) {
      const text = node.textContent.trim().slice(0, 40);
      problems.push(`contrast ${ratio.toFixed(2)} for "${text}"`);
    }
  }
  return problems;
}
"""


def audit(page: Page, path: str) -> list[str]:
    page.goto(path)
    return [f"{path}: {p}" for p in page.evaluate(AUDIT)]


def test_every_page_has_labels_headings_in_order_and_enough_contrast(page: Page) -> None:
    problems: list[str] = []
    for n, path in enumerate(PUBLIC_PAGES):
        problems += audit(page, path)
        shot(page, f"public-{n}-{path.strip('/').replace('/', '-') or 'home'}")
    page.goto("/patient/sign-in")
    problems += [f"identity provider: {p}" for p in page.evaluate(AUDIT)]
    for handle, paths in SIGNED_IN_PAGES.items():
        sign_in(page, handle)
        for path in paths:
            problems += audit(page, path)
        sign_out(page)
    page.goto("/patient/sign-in")
    page.get_by_label("Email address").fill(patient_email(2))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/patient")
    problems += audit(page, "/patient")
    problems += audit(page, "/patient/record")
    shot(page, "patient-record")
    assert problems == []


def test_a_checker_reads_a_request_on_a_phone_each_file_a_table_and_the_measure_a_chart(
    site: Site,
) -> None:
    """At phone width the page itself never scrolls sideways: a wide table scrolls inside its
    own region, which the keyboard reaches; the same audit as every page, at both widths."""
    problems: list[str] = []
    for width, name in ((1100, "desktop"), (375, "phone")):
        context = site.browser.new_context(
            base_url=site.url, viewport={"width": width, "height": 800}
        )
        page = context.new_page()
        sign_in(page, CHECKERS[0])
        problems += [f"{name}: {p}" for p in audit(page, f"/checking/{site.measured}")]
        shot(page, f"checking-request-{name}")
        sideways = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert sideways <= 0, f"{name}: the page scrolls sideways by {sideways}px"
        regions = page.get_by_role("region")
        assert regions.count() == 2  # one per file
        chart = page.locator("svg.chart").locator("visible=true")
        assert chart.count() == 1 and "rate per interval" in (
            chart.locator("title").first.text_content() or ""
        )
        box = chart.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width
        measure = regions.filter(has_text="measure_any_event.csv")
        statuses = measure.locator(".status")
        # "rounded [1]": the status, then the note that says why
        assert statuses.count() > 0 and statuses.first.inner_text().split()[0] in {
            "published",
            "rounded",
            "redacted",
            "suppressed",
        }
        assert statuses.first.get_by_role("link").count() == 1  # its reason, a note away
        if name == "phone":
            wide = measure.evaluate("e => e.scrollWidth > e.clientWidth")
            assert wide, "the measure's table fits a phone: this test shows nothing"
            measure.focus()
            assert measure.evaluate("e => e === document.activeElement")
            page.keyboard.press("ArrowRight")
            # scrolled with the keyboard (smooth scrolling may take a moment to start)
            page.wait_for_function("() => document.activeElement.scrollLeft > 0", timeout=10_000)
        context.close()
    assert problems == []


def test_the_skip_link_comes_first_and_takes_focus_to_the_content(page: Page) -> None:
    page.goto("/safeguards")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent.trim()")
    assert focused == "Skip to main content"
    assert page.locator(".skip-link").bounding_box() is not None
    box = page.locator(".skip-link").bounding_box()
    assert box is not None and box["x"] >= 0  # on screen once focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_focus_is_visible_on_every_control_reached_with_tab(page: Page) -> None:
    page.goto("/register")
    invisible: list[str] = []
    for _ in range(15):
        page.keyboard.press("Tab")
        style = page.evaluate(
            """() => { const e = document.activeElement, s = getComputedStyle(e);
            return [e.tagName + ' ' + e.textContent.trim().slice(0, 30),
                    s.outlineStyle, s.outlineWidth, s.boxShadow]; }"""
        )
        name, outline, width, shadow = style
        if (outline == "none" or width == "0px") and shadow == "none":
            invisible.append(name)
    assert invisible == []


def test_staff_sign_in_works_with_the_keyboard_alone(page: Page) -> None:
    page.goto("/sign-in")
    page.get_by_label("Handle").focus()
    page.keyboard.type(LEAD)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/applications")
    assert f"Signed in as {LEAD}" in page.content()
    shot(page, "06-keyboard-sign-in")


def test_the_accessibility_audit_finds_what_it_looks_for(page: Page) -> None:
    """The audit above, on a page made to fail each check: it must not pass by seeing nothing."""
    page.set_content(
        "<h1>One</h1><h1>Two</h1><h4>Skipped</h4>"
        "<input name='unlabelled'>"
        "<p style='color:#999;background:#fff'>pale grey on white</p>"
    )
    found = " | ".join(page.evaluate(AUDIT))
    assert "label:" in " | ".join(axe(page))  # and axe-core, the same way
    assert "unlabelled has no label" in found
    assert "2 h1 elements" in found
    assert "heading level skipped" in found
    assert "pale grey on white" in found


# ---- every page of every role on a phone: reflow and axe-core -----------------------------------

# axe-core (MPL-2.0, Deque Systems) as the axe-playwright-python wheel ships it: a dev dependency,
# read from the installed package, never fetched at run time.
AXE = Path(importlib.util.find_spec("axe_playwright_python").origin).parent / "axe.min.js"  # type: ignore[arg-type, union-attr]
PHONE = 390
NARROWEST = 320  # WCAG 1.4.10's width: 1280 CSS px at 400% zoom
# Where a crawl never goes: what changes state, downloads (files, the register as CSV or JSON,
# the log's checker) and the identity provider's own pages.
NOT_PAGES = re.compile(
    r"/(sign-out|log/files/|register/releases/|idp/|static/)|.*\.(csv|json|txt|py)$"
)


def pattern(path: str) -> str:
    """A page's kind: its path with every reference, number and hash made one placeholder, so
    the crawl reads one log entry, one application, one run, not all of them."""
    return re.sub(r"/(?=[^/]*\d)[^/]+", "/*", path)


def axe(page: Page) -> list[str]:
    """axe-core's violations on the page as it is, one line each with up to three places."""
    page.add_script_tag(path=str(AXE))
    found: list[str] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', '))"
    )
    return found


def sideways(page: Page) -> int:
    scrolled: int = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return scrolled


# The elements whose right edge is past the screen's and whose children's are not: what to fix.
STICKING_OUT = """
() => {
  const edge = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('body *')].filter(
    e => e.getBoundingClientRect().right > edge + 0.5);
  return out.filter(e => !out.some(o => o !== e && e.contains(o))).slice(0, 3).map(
    e => e.tagName.toLowerCase() + (e.className && e.className.baseVal === undefined
      ? '.' + e.className.trim().split(/\\s+/).join('.') : '')
      + ' "' + (e.textContent || '').trim().slice(0, 30) + '"');
}
"""


def overflow(page: Page, path: str, width: int) -> list[str]:
    """The page at `width` (resized in place: layout follows the viewport), and what sticks
    out if it scrolls sideways."""
    page.set_viewport_size({"width": width, "height": 800})
    wider = sideways(page)
    if wider <= 0:
        return []
    return [f"{path}: scrolls sideways by {wider}px at {width}px: {page.evaluate(STICKING_OUT)}"]


# Kinds of page whose every instance is read for overflow (each log entry says different
# things: a file map, an erasure, a specification); axe reads one of each kind.
EVERY_ONE = re.compile(r"^/log/entries/")


def crawl(page: Page, starts: list[str], seen: set[str]) -> list[str]:
    """Every page reachable by links from `starts` that is of a kind not in `seen`; for each, the
    overflow at phone width and axe-core's violations, as lines to show."""
    problems: list[str] = []
    queue = list(starts)
    while queue:
        path = queue.pop(0)
        kind = pattern(path)
        if path in seen or NOT_PAGES.match(path) or (kind in seen and not EVERY_ONE.match(path)):
            continue
        first = kind not in seen
        seen.update({path, kind})
        response = page.goto(path)
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        problems += overflow(page, path, NARROWEST) + overflow(page, path, PHONE)
        if first:
            problems += [f"{path}: axe {v}" for v in axe(page)]
            shot(
                page,
                "phone" + (kind.replace("/", "-").replace("*", "x") if kind != "/" else "-home"),
            )
        links = page.evaluate(
            "[...document.querySelectorAll('a[href^=\"/\"]')].map(a => a.getAttribute('href'))"
        )
        queue += [link.split("#")[0].split("?")[0] for link in links]
    return problems


def test_every_page_of_every_role_fits_a_phone_and_passes_axe(site: Site, tmp_path: Path) -> None:
    """One browser context at 390 px: the public pages, then each role's, found by following
    links; no page may scroll sideways at 390 px nor at 320 px (WCAG 1.4.10) and axe-core may
    find nothing."""
    # bypass_csp: the portal's policy forbids inline scripts, axe's among them
    context = site.browser.new_context(
        base_url=site.url, viewport={"width": PHONE, "height": 800}, bypass_csp=True
    )
    page = context.new_page()
    seen: set[str] = set()
    problems = crawl(page, [*PUBLIC_PAGES, "/sign-in", "/patient/sign-in"], seen)
    from gpdpr.governance import applications

    draft = act(site.built.engine, lambda s: applications.create_draft(s, LEAD, form()).reference)
    sign_in(page, LEAD)
    page.goto("/research")
    study = tmp_path / "study.py"
    study.write_text(STUDY)
    page.get_by_label("Definition file (JSON)").set_input_files(
        files=[
            FilePayload(
                name="study.json",
                mimeType="application/json",
                buffer=runs.compile_file(study),
            )
        ]
    )
    page.get_by_role("button", name="Upload and check").click()
    page.wait_for_load_state()
    problems += crawl(page, [page.url.removeprefix(site.url), f"/applications/{draft}/edit"], seen)
    sign_out(page)
    for handle, starts in {
        LEAD: ["/applications", "/applications/new", "/research"],
        ADMIN: ["/panel", "/admin", f"/applications/{site.built.application}"],
        CHECKERS[0]: ["/checking"],
    }.items():
        sign_in(page, handle)
        problems += crawl(page, starts, seen)
        sign_out(page)
    page.goto("/patient/sign-in")
    page.get_by_label("Email address").fill(patient_email(2))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/patient")
    problems += crawl(page, ["/patient", "/patient/record"], seen)
    context.close()
    must = {
        "/",
        "/register",
        "/log",
        "/log/entries/*",
        "/applications/new",
        "/applications/*",
        "/panel",
        "/checking/*",
        "/research/runs/*",
        "/patient/record",
        "/admin",
        "/research/definitions/*",
        "/applications/*/edit",
        *(f"/applications/*/edit/{step}" for step in SECTIONS),
        "/applications/*/check",
    }
    assert must <= seen, f"the crawl missed {sorted(must - seen)}"
    assert problems == [], "\n".join(problems)
