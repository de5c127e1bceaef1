"""The fixed words of governance: who takes part, what purposes are allowed, on what legal basis,
and which moves an application may make from each state.

Kept in one place because the automatic checks, the panel, the register and the portal all speak
them, and a purpose or state spelt two ways would let an application slip between the checks.
"""

from __future__ import annotations

from types import MappingProxyType

ORGANISATION_KINDS = MappingProxyType(
    {
        "university": "University or academic institution",
        "nhs_body": "NHS body",
        "local_authority": "Local authority",
        "charity": "Charity",
        "commercial": "Commercial company",
    }
)

ROLES = MappingProxyType(
    {
        "applicant": "applies for access and, once approved, analyses inside the research "
        "environment",
        "panel_member": "sits on the independent review panel and votes on applications",
        "output_checker": "checks results before they leave the research environment",
        "administrator": "runs the process: starts reviews, records decisions, issues and "
        "revokes agreements",
    }
)

# The purposes the service exists for: health and care planning and research.
PURPOSES = MappingProxyType(
    {
        "service_planning": "Planning health and care services",
        "public_health": "Monitoring public health",
        "research": "Research",
        "policy": "Developing health and care policy",
    }
)

# Purposes the law and the service's policy exclude. An application naming one (as its category,
# or by declaring the data or results will be used for it) is refused on submission, with the
# reason, before any person reads it.
EXCLUDED_PURPOSES = MappingProxyType(
    {
        "marketing": "Marketing is excluded: data for planning and research may not be used to "
        "promote or sell products or services.",
        "insurance": "Insurance is excluded: data may not be used to price, underwrite or assess "
        "insurance or to decide on claims.",
        "solely_commercial": "A purely commercial purpose is excluded: commercial use is allowed "
        "only with a stated benefit to health and care.",
    }
)

# The lawful basis under UK GDPR (Article 6 and Article 9 together), as a data access request
# states it.
LEGAL_BASES = MappingProxyType(
    {
        "public_task_health_care": "UK GDPR Art. 6(1)(e) public task and Art. 9(2)(h) health or "
        "social care",
        "public_task_public_health": "UK GDPR Art. 6(1)(e) public task and Art. 9(2)(i) public "
        "health",
        "public_task_research": "UK GDPR Art. 6(1)(e) public task and Art. 9(2)(j) research and "
        "statistics",
        "legitimate_interests_research": "UK GDPR Art. 6(1)(f) legitimate interests and "
        "Art. 9(2)(j) research and statistics",
        "explicit_consent": "UK GDPR Art. 6(1)(a) consent and Art. 9(2)(a) explicit consent",
    }
)

# When the National Data Opt-out need not be applied (the published exemptions).
NDOO_EXEMPTIONS = MappingProxyType(
    {
        "consent": "The people in the data have consented to this use",
        "legal_requirement": "A legal requirement or a court order",
        "overriding_public_interest": "An overriding public interest",
        "communicable_disease": "Communicable disease control and other risks to public health",
    }
)

# Words in a summary that suggest an excluded purpose hiding under a permitted one. They flag the
# application for the panel's attention; they do not refuse it ("marketing authorisation" is how
# a medicine is licensed, and an honest application may say so).
EXCLUDED_PURPOSE_WORDS = (
    "advertis",
    "marketing campaign",
    "direct marketing",
    "sales target",
    "promote our product",
    "insurance",
    "underwrit",
    "actuar",
    "premium",
    "credit scor",
)

# What an application may name as its purpose: the permitted ones, and the excluded ones an
# honest applicant may still pick (and be refused at once, rather than mislabel their purpose).
CATEGORIES = (*PURPOSES, "marketing", "insurance")

SEXES = ("F", "M", "U")

STATES = MappingProxyType(
    {
        "draft": "Draft: being written by the applicant",
        "submitted": "Submitted: awaiting review",
        "under_review": "Under review by the independent panel",
        "approved": "Approved: awaiting a data sharing agreement",
        "refused": "Refused",
        "withdrawn": "Withdrawn by the applicant",
        "agreement_active": "Agreement active",
        "expired": "Agreement expired",
        "revoked": "Agreement revoked",
    }
)

# Every move an application can make: (action, from state) -> to state. Anything not here is
# refused. An action that does not change the state (a vote, an edit) maps a state to itself.
TRANSITIONS = MappingProxyType(
    {
        ("edit", "draft"): "draft",
        ("submit", "draft"): "submitted",  # or straight to refused, by the automatic checks
        ("withdraw", "draft"): "withdrawn",
        ("withdraw", "submitted"): "withdrawn",
        ("withdraw", "under_review"): "withdrawn",
        ("start_review", "submitted"): "under_review",
        ("declare_conflict", "submitted"): "submitted",
        ("declare_conflict", "under_review"): "under_review",
        ("vote", "under_review"): "under_review",
        ("decide", "under_review"): "approved",  # or refused, by the votes
        ("issue_agreement", "approved"): "agreement_active",
        ("revoke", "agreement_active"): "revoked",
        ("expire", "agreement_active"): "expired",
    }
)
ACTIONS = tuple(dict.fromkeys(action for action, _ in TRANSITIONS))

# What an action is, in words, for refusals ("cannot vote on ... ").
ACTION_WORDS = MappingProxyType(
    {
        "edit": "edit",
        "submit": "submit",
        "withdraw": "withdraw",
        "start_review": "start the review of",
        "declare_conflict": "declare a conflict of interest on",
        "vote": "vote on",
        "decide": "record the panel's decision on",
        "issue_agreement": "issue an agreement for",
        "revoke": "revoke the agreement of",
        "expire": "expire the agreement of",
    }
)

DEFAULT_QUORUM = 3
