"""Resources with a canary in every string leaf FHIR R4 allows, the paths generated from FHIR's own
structure definitions (the fhirclient models, which are generated from them), not a hand list.

`planted(kind, base)` is the base resource (valid, so the extractor keeps it) with every element
it does not already have filled in to a fixed depth: each string-typed leaf (string, code, id,
uri, markdown, ...) holds its own canary, as do the primitive extensions (`_element`) beside them,
the extensions of every element, and contained resources. Dates, numbers and booleans get valid
values, so the resource stays one the extractor reads. `swapped(base)` gives one copy of the base
per string leaf it has, that leaf replaced by a canary: the elements the extractor does read.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any

from fhirclient.models.fhirdate import FHIRDate
from fhirclient.models.fhirdatetime import FHIRDateTime
from fhirclient.models.fhirinstant import FHIRInstant
from fhirclient.models.fhirtime import FHIRTime

MAX_DEPTH = 3  # elements within elements: a Quantity in a component of a resource, a coding in it
PREFIX = "cnry"
DATE_VALUES = {
    FHIRDate: "2001-02-03",
    FHIRDateTime: "2001-02-03T04:05:06Z",
    FHIRInstant: "2001-02-03T04:05:06Z",
    FHIRTime: "04:05:06",
}


def model(kind: str) -> Any:
    return getattr(importlib.import_module(f"fhirclient.models.{kind.lower()}"), kind)


@dataclass
class Canaries:
    paths: dict[str, str] = field(default_factory=dict)  # canary -> the FHIR path it sits at

    def new(self, path: str) -> str:
        canary = f"{PREFIX}{len(self.paths):06d}x"
        self.paths[canary] = path
        return canary

    def maximal(self, cls: Any, path: str, depth: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, name, kind, is_list, _, _ in cls().elementProperties():
            here = f"{path}.{name}"
            value = self._value(kind, here, depth)
            if value is None:
                continue
            out[name] = [value] if is_list else value
            if (kind is str or kind in DATE_VALUES) and depth <= 1:
                extension = self._primitive_extension(f"{here}._")
                out[f"_{name}"] = [extension] if is_list else extension
        return out

    def _primitive_extension(self, path: str) -> dict[str, Any]:
        return {
            "id": self.new(f"{path}.id"),
            "extension": [
                {
                    "url": self.new(f"{path}.extension.url"),
                    "valueString": self.new(f"{path}.extension.valueString"),
                }
            ],
        }

    def _value(self, kind: Any, path: str, depth: int) -> Any:
        if kind is str:
            return self.new(path)
        if kind in DATE_VALUES:
            return DATE_VALUES[kind]
        if kind is bool:
            return True
        if kind is int:
            return 1
        if kind is float:
            return 1.5
        if depth >= MAX_DEPTH:
            return None
        name = getattr(kind, "__name__", "")
        if name == "Resource":  # contained: a resource of another kind, and one of the same
            return self.maximal(model("Medication"), f"{path}(Medication)", depth + 2) | {
                "resourceType": "Medication"
            }
        if name == "Extension" and depth >= 1:
            return None
        return self.maximal(kind, path, depth + 1)


def merged(base: Any, extra: Any) -> Any:
    """The base with everything it lacks taken from `extra`; a list of the base's keeps its own
    items first (which the extractor reads) and gains extra's."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(extra, list):
        return [*base, *(e for e in extra if isinstance(e, dict))]
    return base


def planted(canaries: Canaries, base: dict[str, Any]) -> dict[str, Any]:
    kind = base["resourceType"]
    full = canaries.maximal(model(kind), kind)
    full.pop("contained", None)
    full["contained"] = [
        canaries.maximal(model("Medication"), f"{kind}.contained(Medication)", 1)
        | {"resourceType": "Medication"}
    ]
    out: dict[str, Any] = merged(base, full)
    return out


def _leaves(value: Any, trail: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [t for k, v in value.items() if k != "resourceType" for t in _leaves(v, (*trail, k))]
    if isinstance(value, list):
        return [t for i, v in enumerate(value) for t in _leaves(v, (*trail, i))]
    return [trail] if isinstance(value, str) else []


def swapped(canaries: Canaries, base: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for n, trail in enumerate(_leaves(base)):
        copied = copy.deepcopy(base)
        if trail != ("id",):
            copied["id"] = f"{base['id']}-s{n}"
        target: Any = copied
        for step in trail[:-1]:
            target = target[step]
        path = ".".join(str(s) for s in (base["resourceType"], *trail))
        target[trail[-1]] = canaries.new(path)
        out.append(copied)
    return out
