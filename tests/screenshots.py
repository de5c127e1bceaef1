"""Remake the screenshots committed under docs/screenshots/: the home page, the Data Uses Register
and a patient's timeline (after a run read their record, an opt-out and its erasure), each at a
desktop width and at a phone's. Not a test: run it by hand after changing those pages,

    PYTHONPATH=src:tests python tests/screenshots.py

and commit what changed. It builds a small service in a temporary folder, as the tests do."""

from __future__ import annotations

import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from governing import LEAD
from gpdpr.collect.service import Central, erase_cycle
from gpdpr.portal.app import create_app
from gpdpr.portal.security import RateLimit
from gpdpr.portal.serve import publish_now, running
from gpdpr.tre import runs
from portal_home import FAST, PASSWORD, STUDY, build, database, patient_email

OUT = Path(__file__).parents[1] / "docs" / "screenshots"
WIDTHS = {"desktop": 1280, "phone": 390}


def sign_in_patient(page: Page, n: int) -> None:
    page.goto("/patient/sign-in")
    page.get_by_label("Email address").fill(patient_email(n))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/patient")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, database("sqlite"):
        built = build(Path(folder))
        (Path(folder) / "study.py").write_text(STUDY)
        runs.submit(built.home, LEAD, built.agreement, runs.compile_file(Path(folder) / "study.py"))
        app = create_app(built.home, passwords=FAST, rate_limit=RateLimit(), dummy_patients=400)
        with running(app) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            # a patient whose record the run read opts out; the erasure cycle runs
            page = browser.new_page(base_url=url)
            chosen = 0
            for n in range(1, len(built.nhs_numbers) + 1):
                sign_in_patient(page, n)
                page.goto("/patient/record")
                if "Used by an approved project" in page.content():
                    chosen = n
                    break
            assert chosen, "the run read none of the patients with accounts"
            page.goto("/patient")
            page.get_by_role("button", name="Set my Type 1 opt-out").click()
            erase_cycle(Central(built.home))
            publish_now(app)
            page.close()
            for name, width in WIDTHS.items():
                context = browser.new_context(
                    base_url=url, viewport={"width": width, "height": 900}
                )
                page = context.new_page()
                for path, shot in (("/", "home"), ("/register", "register")):
                    page.goto(path)
                    page.screenshot(path=str(OUT / f"{shot}-{name}.png"), full_page=True)
                sign_in_patient(page, chosen)
                page.goto("/patient/record")
                page.screenshot(path=str(OUT / f"patient-timeline-{name}.png"), full_page=True)
                context.close()
            browser.close()
        app.state.portal.close()
        built.engine.dispose()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
