"""The data specification: one TOML file (specification.toml) read into typed, checked objects.

The extractor takes every decision about what leaves a practice from a Specification; the public
page will render the same object. The content hash is over the parsed content (canonical JSON),
so comments and layout can be tidied without changing it, but any change of meaning does.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from gpdpr.errors import UserError
from gpdpr.terminology import DMD_SYSTEM, SNOMED_SYSTEM, ecl, sets
from gpdpr.terminology.sctid import concept_problem

FIELD_TYPES = {"pseudonym", "string", "code", "date", "timestamp", "int", "float", "bool"}
RULES = {"restricted", "sensitive"}
SHIPPED = "specification.toml"
RELEASED = "released.toml"
SECTIONS = {
    "specification",
    "pseudonymisation",
    "type1_opt_out",
    "retention",
    "coarsening",
    "tables",
    "planned",
    "never_collected",
    "code_sets",
    "code_systems",
    "facts",
}
OTHER = "other"  # the vocabulary entry a value outside its vocabulary becomes, where listed
LOOKUP_COLUMNS = {"lsoa_code", "region_code"}


@dataclass(frozen=True)
class Code:
    system: str
    code: str
    term: str


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    description: str
    values: tuple[str, ...] = ()  # a string's closed vocabulary
    system: str | None = None  # a code's system: snomed or dmd
    lookup: str | None = None  # a string taken from this column of the postcode lookup

    @property
    def kind(self) -> str:
        """What the field may carry, as the allowlist the extractor enforces: one of
        pseudonym, code:<system>, vocabulary, lookup:<column>, date, timestamp, number, bool."""
        if self.type == "code":
            return f"code:{self.system}"
        if self.type == "string":
            return "vocabulary" if self.values else f"lookup:{self.lookup}"
        if self.type in ("int", "float"):
            return "number"
        return self.type

    @property
    def otherwise(self) -> str | None:
        """What a value outside the vocabulary becomes."""
        return OTHER if OTHER in self.values else None


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    description: str
    covers: tuple[str, ...]
    fields: tuple[Field, ...]
    date: str | None  # the field retention and plausibility checks use

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class CodeSet:
    name: str
    title: str
    rule: str  # restricted | sensitive
    collect: bool  # always False for restricted sets
    why: str  # the law (restricted) or the reason (sensitive)
    codes: tuple[Code, ...]  # the concepts named, as the public page lists them
    ecl: str  # what the set is: by default each named concept and all its descendants

    def expand(self) -> frozenset[str]:
        """The set's codes in the loaded terminology release."""
        return sets.expand(self.ecl)


@dataclass(frozen=True)
class NeverCollected:
    name: str
    title: str
    what: str
    reason: str
    fhir_resource_types: tuple[str, ...]


@dataclass(frozen=True)
class Specification:
    name: str
    version: str
    effective_from: str
    summary: str
    sha256: str
    source: str  # where it was read from, for messages
    tables: dict[str, Table]
    never_collected: dict[str, NeverCollected]
    code_sets: dict[str, CodeSet]
    dissent: Code
    dissent_withdrawn: Code
    retention_years: int
    retention_tables: tuple[str, ...]
    code_systems: dict[str, tuple[str, ...]]  # snomed | dmd -> the system URIs that mean it
    facts: dict[
        str, dict[str, frozenset[str]]
    ]  # resource type -> element -> statuses that are facts
    raw: dict[str, Any]  # the parsed file, for renderers that show every part of it
    # UK Core NHS number verification statuses under which a number is used; None: any.
    nhs_number_verified: frozenset[str] | None = None

    def excluded_codes(self) -> dict[str, str]:
        """Code -> the name of the set that keeps it out (restricted sets, and sensitive sets
        this specification does not collect), each set expanded in the loaded release."""
        out: dict[str, str] = {}
        for code_set in self.code_sets.values():
            if not code_set.collect:
                for code in code_set.expand():
                    out.setdefault(code, code_set.name)
        return out

    @property
    def dissent_ecl(self) -> str:
        # A withdrawal is never read as a dissent, wherever a release places it.
        return f"<< {self.dissent.code} MINUS << {self.dissent_withdrawn.code}"

    @property
    def withdrawal_ecl(self) -> str:
        return f"<< {self.dissent_withdrawn.code}"

    def code_set_expressions(self) -> dict[str, str]:
        """Every code set the extractor holds records to, by name, as ECL."""
        out = {name: s.ecl for name, s in self.code_sets.items()}
        out["type1_dissent"] = self.dissent_ecl
        out["type1_withdrawn"] = self.withdrawal_ecl
        return out

    def dissent_codes(self) -> frozenset[str]:
        """The codes that record a Type 1 dissent: the specification's concept, its descendants
        and the inactive concepts the release maps to them."""
        return sets.expand(self.dissent_ecl)

    def withdrawal_codes(self) -> frozenset[str]:
        return sets.expand(self.withdrawal_ecl)

    def never_read_resource_types(self) -> set[str]:
        return {t for item in self.never_collected.values() for t in item.fhir_resource_types}


def content_hash(parsed: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)).hexdigest()


@cache
def shipped() -> Specification:
    """The specification this release of gpdpr enforces."""
    text = resources.files(__package__).joinpath(SHIPPED).read_text(encoding="utf-8")
    return parse(text, source=f"gpdpr/spec/{SHIPPED}")


def released_versions() -> dict[str, str]:
    """Every released version of the specification and its content hash (released.toml): the
    versions a package may have been made under, each with the one content it may have."""
    text = resources.files(__package__).joinpath(RELEASED).read_text(encoding="utf-8")
    return {str(k): str(v) for k, v in tomllib.loads(text)["versions"].items()}


def load(path: Path | None) -> Specification:
    """The shipped specification, or another file (its version and hash go into every package)."""
    if path is None:
        return shipped()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the specification {path}: {exc.strerror or exc}") from None
    return parse(text, source=str(path))


def parse(text: str, source: str) -> Specification:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML ({exc}); fix the file and try again") from None
    return _Reader(raw, source).specification()


class _Reader:
    """Walks the parsed TOML, naming the exact key whenever something is missing or wrong."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def fail(self, where: str, problem: str) -> UserError:
        return UserError(f"{self.source}: [{where}] {problem}")

    def get(self, table: Any, key: str, where: str, kind: type = str) -> Any:
        if not isinstance(table, dict):
            raise self.fail(where, "should be a table of keys and values")
        if key not in table:
            raise self.fail(where, f"is missing `{key}`")
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(where, f"`{key}` should be of type {kind.__name__}")
        return value

    def code(self, entry: Any, where: str) -> Code:
        if not isinstance(entry, dict):
            raise self.fail(where, "each code should be { system = ..., code = ..., term = ... }")
        system = self.get(entry, "system", where)
        if system not in ("snomed", "dmd"):
            raise self.fail(where, f"code system {system!r} is not snomed or dmd")
        code = self.get(entry, "code", where)
        problem = concept_problem(code)
        if problem:
            raise self.fail(
                where, f"code {code!r} is not a SNOMED CT concept identifier: {problem}"
            )
        return Code(system, code, self.get(entry, "term", where))

    def specification(self) -> Specification:
        raw = self.raw
        unknown = sorted(set(raw) - SECTIONS)
        if unknown:
            # A misspelt section (say [code_set.hiv]) would otherwise be ignored in silence.
            raise self.fail(unknown[0], f"is not a section of a specification ({sorted(SECTIONS)})")
        head = self.get(raw, "specification", "specification", dict)
        opt_out = self.get(raw, "type1_opt_out", "type1_opt_out", dict)
        retention = self.get(raw, "retention", "retention", dict)
        tables = {
            name: self.table(name, body)
            for name, body in self.get(raw, "tables", "tables", dict).items()
        }
        retention_tables = tuple(self.get(retention, "tables", "retention", list))
        for name in retention_tables:
            if name not in tables or tables[name].date is None:
                raise self.fail("retention", f"table {name!r} is not a dated table in [tables]")
        return Specification(
            name=self.get(head, "name", "specification"),
            version=self.get(head, "version", "specification"),
            effective_from=self.get(head, "effective_from", "specification"),
            summary=self.get(head, "summary", "specification").strip(),
            sha256=content_hash(raw),
            source=self.source,
            tables=tables,
            never_collected={
                name: self.never(name, body)
                for name, body in self.get(raw, "never_collected", "never_collected", dict).items()
            },
            code_sets={
                name: self.code_set(name, body)
                for name, body in self.get(raw, "code_sets", "code_sets", dict).items()
            },
            dissent=self.code(opt_out.get("dissent"), "type1_opt_out.dissent"),
            dissent_withdrawn=self.code(opt_out.get("withdrawn"), "type1_opt_out.withdrawn"),
            retention_years=self._years(retention),
            retention_tables=retention_tables,
            code_systems=self._code_systems(raw.get("code_systems", {})),
            facts=self._facts(raw.get("facts", {})),
            raw=raw,
            nhs_number_verified=self._verified(raw.get("pseudonymisation", {})),
        )

    def _verified(self, body: Any) -> frozenset[str] | None:
        if not isinstance(body, dict) or "nhs_number_verified" not in body:
            return None
        codes = body["nhs_number_verified"]
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
            raise self.fail(
                "pseudonymisation",
                '`nhs_number_verified` should list the verification status codes (e.g. "01")',
            )
        return frozenset(codes)

    def _code_systems(self, body: Any) -> dict[str, tuple[str, ...]]:
        if not body:  # a specification that names no spellings: each system's own URI
            return {"snomed": (SNOMED_SYSTEM,), "dmd": (DMD_SYSTEM,)}
        out = {}
        for system in ("snomed", "dmd"):
            uris = self.get(body, system, "code_systems", list)
            if not uris or not all(isinstance(u, str) and u for u in uris):
                raise self.fail("code_systems", f"`{system}` should list its system URIs")
            out[system] = tuple(uris)
        return out

    def _facts(self, body: Any) -> dict[str, dict[str, frozenset[str]]]:
        out: dict[str, dict[str, frozenset[str]]] = {}
        for kind, elements in self.get({"facts": body}, "facts", "facts", dict).items():
            if kind == "description":
                continue
            where = f"facts.{kind}"
            if not isinstance(elements, dict) or not elements:
                raise self.fail(
                    where, "should list, for a status element, its statuses that are facts"
                )
            out[kind] = {}
            for element, statuses in elements.items():
                if not isinstance(statuses, list) or not all(isinstance(v, str) for v in statuses):
                    raise self.fail(where, f"`{element}` should be a list of statuses")
                out[kind][element] = frozenset(statuses)
        return out

    def _years(self, retention: dict[str, Any]) -> int:
        years: int = self.get(retention, "years", "retention", int)
        if years < 1:
            raise self.fail("retention", f"`years = {years}` must be at least 1")
        return years

    def table(self, name: str, body: dict[str, Any]) -> Table:
        where = f"tables.{name}"
        fields = []
        for field_name, field in self.get(body, "fields", where, dict).items():
            fwhere = f"{where}.fields.{field_name}"
            kind = self.get(field, "type", fwhere)
            if kind not in FIELD_TYPES:
                raise self.fail(fwhere, f"type {kind!r} is not one of {sorted(FIELD_TYPES)}")
            fields.append(self.field(field_name, kind, field, fwhere))
        date = body.get("date")
        if date is not None and date not in {f.name for f in fields}:
            raise self.fail(where, f"`date = {date!r}` is not one of its fields")
        return Table(
            name=name,
            title=self.get(body, "title", where),
            description=self.get(body, "description", where),
            covers=tuple(self.get(body, "covers", where, list)),
            fields=tuple(fields),
            date=date,
        )

    def field(self, name: str, kind: str, body: dict[str, Any], where: str) -> Field:
        """A field and its allowlist: a string without a closed vocabulary, or a code without
        its system, is refused, so that no field can carry whatever the source held."""
        description = self.get(body, "description", where)
        values = body.get("values", [])
        system, lookup = body.get("system"), body.get("lookup")
        if kind == "string":
            if values and lookup is None:
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise self.fail(where, "`values` should be a list of strings")
                return Field(name, kind, description, values=tuple(values))
            if lookup in LOOKUP_COLUMNS and not values:
                return Field(name, kind, description, lookup=lookup)
            raise self.fail(
                where,
                "a string field needs its closed vocabulary (`values = [...]`) or a postcode "
                f"`lookup` column ({sorted(LOOKUP_COLUMNS)}), and not both",
            )
        if values or lookup is not None:
            raise self.fail(where, f"a {kind} field takes no `values` or `lookup`")
        if kind == "code":
            if system not in ("snomed", "dmd"):
                raise self.fail(where, 'a code field needs `system = "snomed"` or "dmd"')
            return Field(name, kind, description, system=system)
        if system is not None:
            raise self.fail(where, f"a {kind} field takes no `system`")
        return Field(name, kind, description)

    def never(self, name: str, body: dict[str, Any]) -> NeverCollected:
        where = f"never_collected.{name}"
        return NeverCollected(
            name=name,
            title=self.get(body, "title", where),
            what=self.get(body, "what", where),
            reason=self.get(body, "reason", where),
            fhir_resource_types=tuple(body.get("fhir_resource_types", [])),
        )

    def code_set(self, name: str, body: dict[str, Any]) -> CodeSet:
        where = f"code_sets.{name}"
        rule = self.get(body, "rule", where)
        if rule not in RULES:
            raise self.fail(where, f"rule {rule!r} is not restricted or sensitive")
        if rule == "restricted":
            if body.get("collect", False):
                raise self.fail(where, "a restricted set is never collected; remove `collect`")
            collect, why = False, self.get(body, "law", where)
        else:
            collect, why = self.get(body, "collect", where, bool), self.get(body, "reason", where)
        codes = tuple(self.code(c, f"{where}.codes") for c in self.get(body, "codes", where, list))
        if not codes:
            raise self.fail(where, "has no codes")
        expression = body.get("ecl")
        if expression is None:
            expression = " OR ".join(f"<< {c.code} |{c.term.replace('|', ' ')}|" for c in codes)
        elif not isinstance(expression, str):
            raise self.fail(where, "`ecl` should be an ECL expression, as text")
        try:
            ecl.parse(expression)
        except UserError as error:
            raise self.fail(where, f"`ecl`: {error}") from None
        title = self.get(body, "title", where)
        return CodeSet(name, title, rule, collect, why, codes, expression)
