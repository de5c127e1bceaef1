"""The demo's governance: a handful of organisations, a panel, and applications that take the
paths a real service sees (approved with conditions, a commercial one refused by the panel,
insurance and marketing refused at once, one still under review), all made through the service
functions, so the register the demo writes is one the real process produced."""

from __future__ import annotations

from datetime import date

from sqlalchemy.orm import Session

from gpdpr.governance import agreements, applications, panel, people
from gpdpr.governance.form import ApplicationForm, Item, Population

LEEDS = "University of Leeds"
ICB = "NHS West Yorkshire Integrated Care Board"
COUNCIL = "Leeds City Council"
TRUST = "Northern Diabetes Research Trust"
MERIDIAN = "Meridian Health Analytics Ltd"
SHIELD = "Shield Life Insurance plc"
BRIGHTWAY = "Brightway Pharmacy Group Ltd"

ORGANISATIONS = (
    (LEEDS, "university"),
    (ICB, "nhs_body"),
    (COUNCIL, "local_authority"),
    (TRUST, "charity"),
    (MERIDIAN, "commercial"),
    (SHIELD, "commercial"),
    (BRIGHTWAY, "commercial"),
)
PEOPLE = (
    ("secretariat", "Panel secretariat", None, ["administrator"]),
    ("r.okafor", "Dr Rachel Okafor", LEEDS, ["applicant"]),
    ("t.nguyen", "Tom Nguyen", LEEDS, ["applicant"]),
    ("j.wright", "Jas Wright", ICB, ["applicant"]),
    ("a.malik", "Aisha Malik", COUNCIL, ["applicant"]),
    ("m.ellis", "Mark Ellis", MERIDIAN, ["applicant"]),
    ("s.hale", "Sophie Hale", SHIELD, ["applicant"]),
    ("d.frost", "Daniel Frost", BRIGHTWAY, ["applicant"]),
    ("panel.lay", "Margaret Owen (lay member)", None, ["panel_member"]),
    ("panel.gp", "Dr Imran Shah (GP)", None, ["panel_member"]),
    ("panel.ethics", "Prof. Helen Clarke (ethics)", None, ["panel_member"]),
    ("panel.stats", "Dr Peter Lowe (statistics)", LEEDS, ["panel_member"]),
    ("check.one", "Output checker one", None, ["output_checker"]),
    ("check.two", "Output checker two", None, ["output_checker"]),
)
ADMIN = "secretariat"

FROM, TO = date(2016, 11, 1), date(2026, 10, 31)  # the ten years the lake holds

DIABETES = ApplicationForm(
    title="Diabetes care and deprivation in England",
    purpose_category="research",
    lay_summary="Do people with type 2 diabetes in poorer areas get the same yearly checks as "
    "everyone else? We will count checks by how deprived each small area is.",
    technical_summary="Adults with a type 2 diabetes code; HbA1c, blood pressure and foot "
    "checks recorded each year, by deprivation decile, age band and sex.",
    expected_benefit="Shows where diabetes care falls short, so commissioners can close gaps.",
    legal_basis="public_task_research",
    duration_months=24,
    population=Population(min_age=18),
    items=(
        Item("patients", "patient", "to count each person once"),
        Item("patients", "sex", "checks differ by sex"),
        Item("patients", "birth_year", "age bands"),
        Item("patients", "birth_month", "age on a given day, for age bands"),
        Item("patients", "imd_decile", "the deprivation measure the study is about"),
        Item("clinical_events", "patient", "whose diagnoses and checks they are"),
        Item("clinical_events", "code", "diagnoses and the checks themselves"),
        Item("clinical_events", "effective_date", "which year each check falls in"),
    ),
    team=("t.nguyen",),
    funders=(TRUST,),
    data_from=FROM,
    data_to=TO,
)
WINTER = ApplicationForm(
    title="Planning winter respiratory capacity",
    purpose_category="service_planning",
    lay_summary="How many people with lung conditions may need care this winter, by area, so "
    "that services can plan staff and beds.",
    technical_summary="Counts of COPD and asthma registers and winter consultations by region.",
    expected_benefit="Better planned winter services for people with lung disease.",
    legal_basis="public_task_health_care",
    duration_months=12,
    items=(
        Item("patients", "patient", "counting people"),
        Item("patients", "region_code", "planning is by region"),
        Item("clinical_events", "patient", "whose conditions they are"),
        Item("clinical_events", "code", "finding lung conditions"),
        Item("clinical_events", "effective_date", "winter periods"),
        Item("appointments", "patient", "whose consultations they are"),
        Item("appointments", "start", "consultations over winter"),
    ),
    data_from=FROM,
    data_to=TO,
)
UPTAKE = ApplicationForm(
    title="Real-world uptake of SGLT2 inhibitors",
    purpose_category="research",
    lay_summary="How quickly a newer kind of diabetes medicine reached the patients it could help.",
    technical_summary="Time from eligibility to first SGLT2 inhibitor prescription.",
    expected_benefit="Faster uptake of an effective treatment where it lags.",
    legal_basis="legitimate_interests_research",
    commercial=True,
    commercial_benefit="A market report sold to manufacturers.",
    duration_months=12,
    items=(
        Item("patients", "patient", "counting people"),
        Item("medications", "patient", "whose prescriptions they are"),
        Item("medications", "code", "which medicine"),
        Item("medications", "issue_date", "when it was first issued"),
        Item("patients", "postcode_key", ""),
    ),
    data_from=FROM,
    data_to=TO,
)
PREMIUMS = ApplicationForm(
    title="Health risk profiles for life cover",
    purpose_category="research",
    lay_summary="Risk of heart disease by age and area, to improve our products.",
    technical_summary="Cardiovascular events by age band and LSOA.",
    expected_benefit="Fairer prices.",
    legal_basis="legitimate_interests_research",
    commercial=True,
    commercial_benefit="Pricing of life cover.",
    uses_for_insurance=True,
    items=(Item("clinical_events", "code", "cardiovascular events"),),
    data_from=FROM,
    data_to=TO,
)
OFFERS = ApplicationForm(
    title="Targeted offers for people on repeat medicines",
    purpose_category="service_planning",
    lay_summary="Find areas with many people on repeat prescriptions to send them offers for "
    "our home delivery service.",
    technical_summary="Counts of repeat medication issues by LSOA and age band.",
    expected_benefit="Convenient delivery of medicines.",
    legal_basis="legitimate_interests_research",
    commercial=True,
    commercial_benefit="New customers for home delivery.",
    uses_for_marketing=True,
    items=(Item("medications", "code", "which medicines are repeated"),),
    data_from=FROM,
    data_to=TO,
)
OBESITY = ApplicationForm(
    title="Childhood obesity by neighbourhood",
    purpose_category="public_health",
    lay_summary="Where children's weight problems are most common, to target programmes.",
    technical_summary="BMI centile codes in children by LSOA.",
    expected_benefit="Programmes aimed where they help most.",
    legal_basis="public_task_public_health",
    population=Population(max_age=17),
    items=(
        Item("patients", "lsoa_code", "neighbourhood level is the point"),
        Item("clinical_events", "code", "weight codes"),
        Item("clinical_events", "value", "BMI"),
    ),
    data_from=FROM,
    data_to=TO,
)


def seed(session: Session) -> dict[str, str]:
    """Make the sample organisations, people and applications; each application's reference
    and where it ended up."""
    for handle, name, org, roles in PEOPLE[:1]:  # the first administrator, who adds the rest
        people.add_person(session, None, handle, name, f"{handle}@example.org", org, roles)
    for name, kind in ORGANISATIONS:
        people.add_organisation(session, ADMIN, name, kind)
    for handle, name, org, roles in PEOPLE[1:]:
        people.add_person(session, ADMIN, handle, name, f"{handle}@example.org", org, roles)

    def submitted(lead: str, form: ApplicationForm, review: bool = True) -> str:
        reference = applications.create_draft(session, lead, form).reference
        applications.submit(session, lead, reference)
        if review:
            panel.start_review(session, ADMIN, reference)
        return reference

    diabetes = submitted("r.okafor", DIABETES)
    for member in ("panel.lay", "panel.gp", "panel.ethics"):  # panel.stats is from Leeds
        panel.vote(session, member, diabetes, "approve")
    panel.decide(
        session,
        ADMIN,
        diabetes,
        "The panel agreed the study is in the public interest and asks only for what it needs. "
        "Dr Lowe did not vote (University of Leeds).",
        ["Outputs at deprivation decile level only", "No linkage to other datasets"],
    )
    agreements.issue(session, ADMIN, diabetes)

    winter = submitted("j.wright", WINTER)
    for member in ("panel.lay", "panel.gp", "panel.stats"):
        panel.vote(session, member, winter, "approve")
    panel.decide(session, ADMIN, winter, "Approved for the winter planning round.")
    agreements.issue(session, ADMIN, winter)

    uptake = submitted("m.ellis", UPTAKE)
    panel.declare_conflict(session, "panel.gp", uptake, "advised Meridian in 2024")
    panel.vote(session, "panel.lay", uptake, "refuse", "benefit is mostly the company's")
    panel.vote(session, "panel.ethics", uptake, "refuse", "postcode key not justified")
    panel.vote(session, "panel.stats", uptake, "approve")
    panel.decide(
        session,
        ADMIN,
        uptake,
        "Refused: the benefit to health and care was not shown to outweigh the commercial one, "
        "and the postcode key was asked for without a reason. A narrower application is welcome.",
    )

    premiums = submitted("s.hale", PREMIUMS, review=False)  # refused by the automatic checks
    offers = submitted("d.frost", OFFERS, review=False)  # and so is marketing
    obesity = submitted("a.malik", OBESITY)
    return {
        ref: applications.application(session, ref).state
        for ref in (diabetes, winter, uptake, premiums, offers, obesity)
    }
