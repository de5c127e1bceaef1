"""The FHIR output parses as FHIR R4: a sample of every resource type through an R4 model library
(fhirclient, generated from FHIR 4.0.1), strictly: unknown elements and wrong types are errors."""

from __future__ import annotations

import importlib
import re

import pytest
from fhirclient.models.fhirabstractbase import FHIRValidationError

from gpdpr.synth.fhir import RESOURCE_TYPES
from readers import FhirOutput

SAMPLE = 300
MODULE = {kind: kind.lower() for kind in RESOURCE_TYPES}


def model(kind: str) -> type:
    return getattr(importlib.import_module(f"fhirclient.models.{MODULE[kind]}"), kind)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", RESOURCE_TYPES)
def test_resources_parse_as_r4(clean_fhir_read: FhirOutput, kind: str) -> None:
    resources = clean_fhir_read.of(kind)
    assert resources, f"no {kind} resources written"
    step = max(1, len(resources) // SAMPLE)
    for resource in resources[::step]:
        data = {k: v for k, v in resource.items() if k != "_ods"}
        parsed = model(kind)(data, strict=True)
        assert parsed.as_json()["id"] == resource["id"]
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", resource["id"])


def test_the_r4_model_does_reject_what_is_not_r4(clean_fhir_read: FhirOutput) -> None:
    patient = dict(clean_fhir_read.of("Patient")[0])
    patient.pop("_ods")
    patient["favouriteColour"] = "blue"
    with pytest.raises(FHIRValidationError):
        model("Patient")(patient, strict=True)
