"""Picking the specification's elements out of one FHIR R4 resource, whatever shape it comes in.

Every element is read through a helper that checks its JSON shape; an element of the wrong shape
(a reference given as a string, `coding` as an object, a list where one value belongs) raises
`Shape` naming its FHIR path, and the reader quarantines the resource with that path. Elements
the specification does not use are never looked at, so they may hold anything.

References are read in every form a server writes: relative (`Patient/1`), absolute
(`https://server/fhir/Patient/1`), versioned (`Patient/1/_history/3`) and a Bundle's
`urn:uuid:...` (whose resource carries the uuid as its id, as exports unpacked from Bundles do).
A `[x]` choice is read from every form the field can come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

from gpdpr.practice import fhir_ages as ages
from gpdpr.practice.fhir_ages import AgeSpan, Uncollected
from gpdpr.practice.rules import ENTERED_IN_ERROR, NOT_A_FACT_STATUS, NOT_IN_FORCE
from gpdpr.terminology import (
    NHS_NUMBER_SYSTEM,
    REGISTRATION_END_EXT,
    UCUM_SYSTEM,
    VACCINATION_PROCEDURE_EXT,
)

Row = dict[str, Any]
FACT = "active"
SEX = {"female": "F", "male": "M"}
PRIORITY = {"routine": "routine", "urgent": "urgent", "asap": "two-week-wait", "stat": "urgent"}
COMPARATORS = {"<", "<=", ">=", ">", "ad"}  # a bound, not a value: `<5` is not 5
GP_REGISTRATION = ("gp", "registration", "regular", "temporary")


class Shape(Exception):
    """An element the specification reads is of the wrong JSON shape."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@dataclass
class Context:
    """What reading one resource needs beyond the resource."""

    snomed: frozenset[str]  # system URIs that mean SNOMED CT
    dmd: frozenset[str]  # and dm+d
    facts: dict[str, dict[str, frozenset[str]]]  # the specification's [facts]
    extracted_on: str  # ISO date of the extract: later period ends are still current
    verified: frozenset[str] | None = None  # NHS number verification statuses that may be used

    @cached_property
    def fact_elements(self) -> dict[str, tuple[tuple[str, frozenset[str]], ...]]:
        return {kind: tuple(elements.items()) for kind, elements in self.facts.items()}


# ---- shape-checked access -----------------------------------------------------------------------


def obj(value: Any, path: str) -> dict[str, Any] | None:
    if value is None or type(value) is dict:
        return value
    raise Shape(path)


def seq(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if type(value) is list:
        return value
    raise Shape(path)


def text(value: Any, path: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise Shape(path)


def local_id(reference: str, kind: str | None) -> str | None:
    """The id a reference points at, if it points at a resource of `kind` (any kind if None)."""
    if kind is not None:  # the common form first: "Patient/123"
        prefix = _PREFIX.get(kind) or f"{kind}/"
        if reference.startswith(prefix) and "/" not in reference[len(prefix) :]:
            return reference[len(prefix) :] or None
    if reference.startswith("urn:uuid:"):
        return reference[9:] or None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        del parts[-2:]
    if len(parts) < 2 or not parts[-1] or (kind is not None and parts[-2] != kind):
        return None
    return parts[-1]


_PREFIX = {k: f"{k}/" for k in ("Patient", "Practitioner", "Medication")}


class ByIdentifier(str):
    """A reference to a patient that names them only by an identifier (`Reference.identifier`,
    or a conditional reference `Patient?identifier=system|value`), until the reader resolves it
    to the id of the patient the export holds with that identifier. Its text is the lookup key
    (`system|value`, or empty when the identifier's system is not one a patient may be named
    by): it is never written anywhere, only looked up, and `path` names the element."""

    path: str

    @classmethod
    def of(cls, system: Any, value: Any, path: str) -> ByIdentifier:
        allowed = type(system) is str and system in PATIENT_IDENTIFIER_SYSTEMS
        key = f"{system}|{identifier_value(value)}" if allowed and type(value) is str else ""
        made = cls(key)
        made.path = path
        return made


# The identifier systems a reference may name a patient by: the NHS number alone. A practice's
# own numbering, or any other system, cannot be told from another organisation's.
PATIENT_IDENTIFIER_SYSTEMS = frozenset({NHS_NUMBER_SYSTEM})


def identifier_value(value: str) -> str:
    """An identifier's value as it is compared: NHS numbers are written with and without spaces."""
    return value.replace(" ", "")


def _by_identifier(value: dict[str, Any], path: str, kind: str | None) -> str | None:
    identifier = obj(value.get("identifier"), f"{path}.identifier")
    if identifier is None or kind != "Patient":
        return None  # staff named only by an identifier are not known to the practice's staff
    return ByIdentifier.of(identifier.get("system"), identifier.get("value"), f"{path}.identifier")


def _conditional(target: str, path: str, kind: str | None) -> str | None:
    """`Patient?identifier=system|value`, a reference a server resolves by searching."""
    if kind != "Patient" or not target.startswith("Patient?"):
        return None
    query = parse_qsl(target[len("Patient?") :], keep_blank_values=True)
    where = f"{path}.reference"
    if len(query) != 1 or query[0][0] != "identifier" or "|" not in query[0][1]:
        return ByIdentifier.of(None, None, where)
    system, value = query[0][1].split("|", 1)
    return ByIdentifier.of(system, value, where)


def ref(value: Any, path: str, kind: str | None = "Patient") -> str | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise Shape(path)
    target = value.get("reference")
    if target is None:
        return _by_identifier(value, path, kind) if "identifier" in value else None
    if type(target) is not str:
        raise Shape(f"{path}.reference")
    prefix = _PREFIX.get(kind) if kind is not None else None
    if prefix is not None and target.startswith(prefix):  # the common form, "Patient/123"
        rest = target[len(prefix) :]
        if rest and "/" not in rest:
            return rest
    if "?" in target:
        return _conditional(target, path, kind)
    return local_id(target, kind)


def codings(concept: Any, path: str) -> list[Any]:
    if concept is None:
        return []
    if type(concept) is not dict:
        raise Shape(path)
    found = concept.get("coding")
    if found is None:
        return []
    if type(found) is not list:
        raise Shape(f"{path}.coding")
    return found


def code(concept: Any, systems: frozenset[str], path: str) -> str | None:
    """The first code of one of `systems`, in whatever position its coding is."""
    for coding in codings(concept, path):
        if type(coding) is not dict:
            raise Shape(f"{path}.coding")
        system = coding.get("system")
        if type(system) is str and system in systems:
            value = coding.get("code")
            if type(value) is str:
                return value
    return None


def first_code(concept: Any, path: str) -> str | None:
    for coding in codings(concept, path):
        if type(coding) is not dict:
            raise Shape(f"{path}.coding")
        value = coding.get("code")
        if type(value) is str:
            return value
    return None


_CHOICES: dict[str, tuple[str, ...]] = {}


def when(r: Row, base: str, kind: str) -> str | AgeSpan | Uncollected | None:
    """A date from a `[x]` choice: its dateTime, instant or the start of its period; an age or
    range of ages, made a date once the patient's birth date is known (see fhir_ages); or, for
    words or a schedule, Uncollected: no date is made from them."""
    keys = _CHOICES.get(base)
    if keys is None:
        keys = _CHOICES[base] = tuple(
            f"{base}{form}"
            for form in ("DateTime", "Instant", "Period", "Age", "Range", "String", "Timing")
        )
    for key in keys[:2]:
        value = r.get(key)
        if value is not None:
            return value if type(value) is str else _raise(f"{kind}.{key}")
    period = r.get(keys[2])
    if period is not None:
        if type(period) is not dict:
            raise Shape(f"{kind}.{keys[2]}")
        return text(period.get("start"), f"{kind}.{keys[2]}.start")
    value = r.get(keys[3])
    if value is not None:
        return ages.age(value, f"{kind}.{keys[3]}")
    value = r.get(keys[4])
    if value is not None:
        return ages.age_range(value, f"{kind}.{keys[4]}")
    for key in keys[5:]:
        if r.get(key) is not None:
            return Uncollected(f"{kind}.{key}")
    return None


def _raise(path: str) -> str:
    raise Shape(path)


def status(kind: str, r: Row, ctx: Context) -> str:
    """FACT, entered-in-error, or not-a-fact, by the specification's [facts] for this type. An
    element left out counts as a fact; a value outside the declared facts does not."""
    for element, facts in ctx.fact_elements.get(kind, ()):
        value = r.get(element)
        if value is None:
            continue
        given = value if type(value) is str else first_code(value, f"{kind}.{element}")
        if given in facts:
            continue
        return ENTERED_IN_ERROR if given == ENTERED_IN_ERROR else NOT_A_FACT_STATUS
    return FACT


def extension_value(r: Row, url: str, key: str, path: str) -> Any:
    for extension in seq(r.get("extension"), f"{path}.extension"):
        e = obj(extension, f"{path}.extension")
        if e is not None and e.get("url") == url:
            return e.get(key)
    return None


# ---- one function per resource type: resource -> canonical row -------------------------------


def condition(r: Row, ctx: Context) -> Row:
    categories = seq(r.get("category"), "Condition.category")
    category = first_code(categories[0], "Condition.category") if categories else None
    return {
        "patient_ref": ref(r.get("subject"), "Condition.subject"),
        "staff_ref": ref(r.get("recorder"), "Condition.recorder", "Practitioner"),
        "category": "symptom" if category == "encounter-diagnosis" else "condition",
        "code": code(r.get("code"), ctx.snomed, "Condition.code"),
        "effective_date": when(r, "onset", "Condition"),
        "recorded_at": r.get("recordedDate"),
    }


def observation(r: Row, ctx: Context) -> Row:
    quantity = obj(r.get("valueQuantity"), "Observation.valueQuantity") or {}
    value = quantity.get("value")
    if quantity.get("comparator") in COMPARATORS:
        value = None
    unit = quantity.get("code") if quantity.get("system") == UCUM_SYSTEM else None
    performers = seq(r.get("performer"), "Observation.performer")
    return {
        "patient_ref": ref(r.get("subject"), "Observation.subject"),
        "staff_ref": ref(performers[0], "Observation.performer", "Practitioner")
        if performers
        else None,
        "category": "observation",
        "code": code(r.get("code"), ctx.snomed, "Observation.code"),
        "effective_date": when(r, "effective", "Observation"),
        "recorded_at": r.get("issued"),
        "value": value,
        "unit": unit if unit is not None else quantity.get("unit"),
    }


def procedure(r: Row, ctx: Context) -> Row:
    return {
        "patient_ref": ref(r.get("subject"), "Procedure.subject"),
        "staff_ref": ref(r.get("recorder"), "Procedure.recorder", "Practitioner"),
        "category": "procedure",
        "code": code(r.get("code"), ctx.snomed, "Procedure.code"),
        "effective_date": when(r, "performed", "Procedure"),
    }


def _medication(r: Row, ctx: Context, kind: str) -> tuple[str | None, str | None]:
    """(dm+d code, or the id of the Medication it refers to)."""
    concept = r.get("medicationCodeableConcept")
    if concept is not None:
        return code(concept, ctx.dmd, f"{kind}.medicationCodeableConcept"), None
    reference = obj(r.get("medicationReference"), f"{kind}.medicationReference")
    if reference is None:
        return None, None
    target = text(reference.get("reference"), f"{kind}.medicationReference.reference")
    if target is None:
        return None, None
    if target.startswith("#"):
        for contained in seq(r.get("contained"), f"{kind}.contained"):
            c = obj(contained, f"{kind}.contained")
            if c and c.get("resourceType") == "Medication" and c.get("id") == target[1:]:
                return code(c.get("code"), ctx.dmd, f"{kind}.contained.code"), None
        return None, None
    return None, local_id(target, "Medication")


def medication_request(r: Row, ctx: Context) -> Row:
    request = obj(r.get("dispenseRequest"), "MedicationRequest.dispenseRequest") or {}
    quantity = obj(request.get("quantity"), "MedicationRequest.dispenseRequest.quantity") or {}
    course = first_code(r.get("courseOfTherapyType"), "MedicationRequest.courseOfTherapyType")
    dmd, medication = _medication(r, ctx, "MedicationRequest")
    return {
        "patient_ref": ref(r.get("subject"), "MedicationRequest.subject"),
        "staff_ref": ref(r.get("requester"), "MedicationRequest.requester", "Practitioner"),
        "code": dmd,
        "_medication": medication,
        "issue_date": r.get("authoredOn"),
        "quantity": quantity.get("value"),
        "quantity_unit": quantity.get("unit"),
        "course": "acute" if course == "acute" else "repeat",
        "source": "issued",
    }


def medication_statement(r: Row, ctx: Context) -> Row:
    dmd, medication = _medication(r, ctx, "MedicationStatement")
    return {
        "patient_ref": ref(r.get("subject"), "MedicationStatement.subject"),
        "staff_ref": ref(
            r.get("informationSource"), "MedicationStatement.informationSource", "Practitioner"
        ),
        "code": dmd,
        "_medication": medication,
        "issue_date": when(r, "effective", "MedicationStatement"),
        "source": "elsewhere",
    }


def immunization(r: Row, ctx: Context) -> Row:
    procedure_concept = extension_value(
        r, VACCINATION_PROCEDURE_EXT, "valueCodeableConcept", "Immunization"
    )
    performers = seq(r.get("performer"), "Immunization.performer")
    first = obj(performers[0], "Immunization.performer") if performers else None
    return {
        "patient_ref": ref(r.get("patient"), "Immunization.patient"),
        "staff_ref": ref(first.get("actor"), "Immunization.performer.actor", "Practitioner")
        if first
        else None,
        "procedure_code": code(procedure_concept, ctx.snomed, "Immunization.extension"),
        "vaccine_code": code(r.get("vaccineCode"), ctx.dmd, "Immunization.vaccineCode"),
        "date": when(r, "occurrence", "Immunization"),
    }


def allergy(r: Row, ctx: Context) -> Row:
    return {
        "patient_ref": ref(r.get("patient"), "AllergyIntolerance.patient"),
        "staff_ref": ref(r.get("recorder"), "AllergyIntolerance.recorder", "Practitioner"),
        "code": code(r.get("code"), ctx.snomed, "AllergyIntolerance.code"),
        "onset_date": when(r, "onset", "AllergyIntolerance"),
        "recorded_at": r.get("recordedDate"),
    }


def appointment(r: Row, ctx: Context) -> Row:
    patient = staff = None
    for participant in seq(r.get("participant"), "Appointment.participant"):
        p = obj(participant, "Appointment.participant") or {}
        actor = obj(p.get("actor"), "Appointment.participant.actor") or {}
        target = text(actor.get("reference"), "Appointment.participant.actor.reference")
        if target is None or target.startswith("Patient?"):
            if patient is None and _names_patient(actor):
                patient = ref(actor, "Appointment.participant.actor")
            continue
        found = local_id(target, "Patient")
        if found is not None:
            patient = patient or found
        elif staff is None:
            staff = local_id(target, "Practitioner")
    kind = obj(r.get("appointmentType"), "Appointment.appointmentType") or {}
    mode = kind.get("text")
    return {
        "patient_ref": patient,
        "staff_ref": staff,
        "start": r.get("start"),
        "duration_minutes": r.get("minutesDuration"),
        "mode": mode.lower() if type(mode) is str else None,
        "booked_at": r.get("created"),
    }


def _names_patient(actor: dict[str, Any]) -> bool:
    """Whether an appointment's participant without a plain reference is a patient: a
    conditional reference to one, or an identifier of a system only patients have (a clinician
    named by their smartcard id is not one)."""
    if "reference" in actor:
        return True
    identifier = actor.get("identifier")
    return type(identifier) is dict and identifier.get("system") in PATIENT_IDENTIFIER_SYSTEMS


def service_request(r: Row, ctx: Context) -> Row:
    priority = r.get("priority")
    return {
        "patient_ref": ref(r.get("subject"), "ServiceRequest.subject"),
        "staff_ref": ref(r.get("requester"), "ServiceRequest.requester", "Practitioner"),
        "code": code(r.get("code"), ctx.snomed, "ServiceRequest.code"),
        "referral_date": r.get("authoredOn"),
        "priority": PRIORITY.get(priority if type(priority) is str else "routine"),
    }


def episode_of_care(r: Row, ctx: Context) -> Row:
    period = obj(r.get("period"), "EpisodeOfCare.period") or {}
    types = seq(r.get("type"), "EpisodeOfCare.type")
    label = ""
    for t in types:
        concept = obj(t, "EpisodeOfCare.type") or {}
        words = [concept.get("text")] + [
            c.get("display") if type(c) is dict else None for c in codings(t, "EpisodeOfCare.type")
        ]
        label = " ".join(w for w in words if type(w) is str).lower()
        if label:
            break
    end = extension_value(r, REGISTRATION_END_EXT, "valueString", "EpisodeOfCare")
    return {
        "patient_ref": ref(r.get("patient"), "EpisodeOfCare.patient"),
        "start_date": period.get("start"),
        "end_date": period.get("end"),
        "registration_type": "temporary" if "temporary" in label else "regular",
        "end_reason": end.lower() if type(end) is str else None,
        "_gp": any(word in label for word in GP_REGISTRATION) or not types,
    }


def _current(entries: list[Any], path: str, today: str) -> list[dict[str, Any]]:
    """Entries (identifiers, addresses) not marked old and whose period has not ended."""
    out = []
    for entry in entries:
        e = obj(entry, path)
        if not e or e.get("use") == "old":
            continue
        period = obj(e.get("period"), f"{path}.period") or {}
        end = period.get("end")
        if type(end) is str and end[:10] < today:
            continue
        out.append(e)
    return out


UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-"
ETHNIC_CATEGORY_EXT = f"{UK_CORE}EthnicCategory"
ETHNIC_CATEGORY_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"
VERIFICATION_EXT = f"{UK_CORE}NHSNumberVerificationStatus"
VERIFICATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"


def verified_number(identifier: dict[str, Any], ctx: Context) -> bool:
    """Whether an NHS number identifier may link records (see `_verified`); one whose status
    is of the wrong shape may not."""
    try:
        return _verified(identifier, ctx)
    except Shape:
        return False


def _verified(identifier: dict[str, Any], ctx: Context) -> bool:
    """Whether an NHS number may be used: its UK Core verification status is one the
    specification accepts, or it gives none (the practice system's number, as held)."""
    if ctx.verified is None or "extension" not in identifier:
        return True
    path = "Patient.identifier.extension"
    status = extension_value(identifier, VERIFICATION_EXT, "valueCodeableConcept", path)
    if status is None:
        return True
    given = code(status, frozenset({VERIFICATION_SYSTEM}), f"{path}.valueCodeableConcept")
    return given in ctx.verified


def _ethnic_category(r: Row) -> str | None:
    """The UK Core ethnic category's code, whatever it is: the specification's vocabulary is
    applied where every column's is, and anything outside it leaves as `other`."""
    concept = extension_value(r, ETHNIC_CATEGORY_EXT, "valueCodeableConcept", "Patient")
    path = "Patient.extension.valueCodeableConcept"
    return code(concept, frozenset({ETHNIC_CATEGORY_SYSTEM}), path)


def patient(r: Row, ctx: Context) -> Row:
    identifiers = _current(
        seq(r.get("identifier"), "Patient.identifier"), "Patient.identifier", ctx.extracted_on
    )
    nhs_number = next(
        (
            i.get("value")
            for i in identifiers
            if i.get("system") == NHS_NUMBER_SYSTEM and _verified(i, ctx)
        ),
        None,
    )
    addresses = _current(
        seq(r.get("address"), "Patient.address"), "Patient.address", ctx.extracted_on
    )
    home = [a for a in addresses if a.get("use") in (None, "home") and a.get("type") != "postal"]
    address = (home or addresses or [{}])[0]
    birth = r.get("birthDate")
    death = r.get("deceasedDateTime")
    gender = r.get("gender")
    return {
        "patient_ref": r.get("id"),
        "nhs_number": nhs_number if type(nhs_number) is str else None,
        "date_of_birth": birth,
        "_date_of_birth_precision": len(birth) if type(birth) is str else None,
        "sex": SEX.get(gender, "U") if type(gender) is str else "U",
        "date_of_death": death,
        "_date_of_death_precision": len(death) if type(death) is str else None,
        "postcode": address.get("postalCode"),
        "ethnic_category": _ethnic_category(r) if "extension" in r else None,
    }


BUILDERS = {
    "Condition": condition,
    "Observation": observation,
    "Procedure": procedure,
    "MedicationRequest": medication_request,
    "MedicationStatement": medication_statement,
    "Immunization": immunization,
    "AllergyIntolerance": allergy,
    "Appointment": appointment,
    "ServiceRequest": service_request,
    "EpisodeOfCare": episode_of_care,
    "Patient": patient,
}


def canonical_row(kind: str, r: Row, ctx: Context) -> Row:
    """A resource as a canonical row: its type's own fields, whether it is a fact, and when it
    last changed. Raises Shape for an element of the wrong shape."""
    row = BUILDERS[kind](r, ctx)
    fact = status(kind, r, ctx)
    if kind == "Appointment":
        raw = r.get("status")
        row["status"] = raw if fact == FACT and type(raw) is str else fact
    else:
        row["status"] = fact
    meta = obj(r.get("meta"), f"{kind}.meta") or {}
    row["last_modified"] = meta.get("lastUpdated")
    return row


# ---- Type 1 opt-outs -----------------------------------------------------------------------------

OPT_OUT_TYPES = ("Condition", "Observation", "Procedure", "Consent", "Flag")
OPT_OUT_SUBJECT = {"Consent": "patient"}
OPT_OUT_DATES = {
    "Condition": ("onset", "recordedDate"),
    "Observation": ("effective", "issued"),
    "Procedure": ("performed", None),
    "Consent": ("date", None),
    "Flag": ("period", None),
}


def opt_out_codes(r: Any, codes: frozenset[str], snomed: frozenset[str]) -> set[str]:
    """Every opt-out code anywhere in the resource, in any coding position, under any spelling
    of SNOMED CT or none (a code of the UK extension means one thing whatever system is named)."""
    found: set[str] = set()
    stack = [r]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            value = item.get("code")
            if type(value) is str and value in codes:
                system = item.get("system")
                if system is None or system in snomed:
                    found.add(value)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return found


def opt_out_date(kind: str, r: Row) -> tuple[Any, Any]:
    """(the date the entry applies to, when it was recorded), either possibly of any shape."""
    base, recorded = OPT_OUT_DATES[kind]
    if kind == "Consent":
        value: Any = r.get("dateTime")
    elif kind == "Flag":
        period = r.get("period")
        value = period.get("start") if type(period) is dict else None
    else:
        try:
            value = when(r, base, kind)
        except Shape:
            value = object()  # unreadable: the caller treats it as undated
    return value, r.get(recorded) if recorded else None


# Statuses that say a Consent or Flag is no longer (or never was) in force. Only these release a
# patient: any other status, or none, leaves the entry counting, since where the record is unclear
# the dissent stands.
NOT_IN_FORCE_STATUSES = {
    "Consent": frozenset({"inactive", "rejected", ENTERED_IN_ERROR}),
    "Flag": frozenset({"inactive", ENTERED_IN_ERROR}),
}


def opt_out_status(kind: str, r: Row, today: str) -> str:
    """FACT, entered-in-error, or NOT_IN_FORCE (a Consent or Flag made inactive, rejected, or
    whose period ended before the extract: it no longer records a decision)."""
    given = r.get("status")
    if given == ENTERED_IN_ERROR:
        return ENTERED_IN_ERROR
    if given in NOT_IN_FORCE_STATUSES.get(kind, ()):
        return NOT_IN_FORCE
    if kind == "Consent":
        provision = r.get("provision")
        period = provision.get("period") if type(provision) is dict else None
    elif kind == "Flag":
        period = r.get("period")
    else:
        return FACT
    end = period.get("end") if type(period) is dict else None
    if type(end) is str and len(end) >= 4 and _last_day(end) < today:
        return NOT_IN_FORCE
    return FACT


def _last_day(value: str) -> str:
    """The last day a partial date may mean, as text that sorts with ISO dates ("2023" is in
    force until 2023-12-31): an end known only to its year or month has not passed before then."""
    if len(value) == 4:
        return f"{value}-12-31"
    if len(value) == 7:
        return f"{value}-31"
    return value[:10]


def opt_out_subject(kind: str, r: Row) -> str | None:
    element = OPT_OUT_SUBJECT.get(kind, "subject")
    try:
        return ref(r.get(element), f"{kind}.{element}")
    except Shape:
        return None
