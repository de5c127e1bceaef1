"""The automatic checks made when an application is submitted, before any person reads it.

Three outcomes, in this order: a purpose the law and policy exclude refuses the application with
the reason; anything missing keeps it a draft, listing what to fill in; anything the panel should
look at closely (an item without a justification, a word suggesting an excluded purpose, a
commercial applicant, an opt-out exemption claimed) is flagged to the panel.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpdpr.governance.form import ApplicationForm
from gpdpr.governance.vocabulary import EXCLUDED_PURPOSE_WORDS, EXCLUDED_PURPOSES, NDOO_EXEMPTIONS


@dataclass(frozen=True)
class Screening:
    refusals: list[str]  # non-empty: refused at once
    missing: list[str]  # non-empty: stays a draft
    flags: list[str]  # for the panel


def screen(form: ApplicationForm) -> Screening:
    return Screening(_refusals(form), _missing(form), _flags(form))


def _refusals(form: ApplicationForm) -> list[str]:
    out = []
    if form.purpose_category == "marketing" or form.uses_for_marketing:
        out.append(EXCLUDED_PURPOSES["marketing"])
    if form.purpose_category == "insurance" or form.uses_for_insurance:
        out.append(EXCLUDED_PURPOSES["insurance"])
    if form.commercial and not form.expected_benefit.strip():
        out.append(EXCLUDED_PURPOSES["solely_commercial"])
    return out


def _missing(form: ApplicationForm) -> list[str]:
    required = {
        "lay_summary": form.lay_summary,
        "technical_summary": form.technical_summary,
        "expected_benefit": form.expected_benefit,
        "legal_basis": form.legal_basis,
    }
    out = [f"{name}: fill it in" for name, value in required.items() if not value.strip()]
    if form.data_from is None or form.data_to is None:
        out.append("data_from and data_to: the period of records needed")
    if not form.items:
        out.append("items: the data items needed, each with its justification")
    if form.commercial and not form.commercial_benefit.strip():
        out.append("commercial_benefit: what the commercial applicant gains")
    if form.ndoo_exemption and not form.ndoo_exemption_reason.strip():
        out.append("ndoo_exemption_reason: why the exemption applies")
    return out


def _flags(form: ApplicationForm) -> list[str]:
    out = [
        f"{item.table}.{item.field} has no justification"
        for item in form.items
        if not item.justification.strip()
    ]
    text = " ".join((form.title, form.lay_summary, form.technical_summary)).lower()
    words = sorted({w for w in EXCLUDED_PURPOSE_WORDS if w in text})
    if words:
        out.append(
            "the summaries mention "
            + ", ".join(repr(w) for w in words)
            + ": check the purpose is not marketing or insurance"
        )
    if form.commercial:
        out.append("commercial applicant: weigh the health and care benefit against the gain")
    if form.ndoo_exemption:
        out.append(
            "claims an exemption from the National Data Opt-out: "
            + NDOO_EXEMPTIONS[form.ndoo_exemption].lower()
        )
    return out
