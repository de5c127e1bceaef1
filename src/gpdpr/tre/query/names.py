"""The one rule for every name a definition gives: variables, measures, their groups, aggregate
tables and the variables a table lists. The language applies it as the researcher writes, and
`serial.from_json` again when the service receives a definition, so a name edited into the JSON
meets the same rule. Names never reach SQL (the compiler names its own columns); they label
results and files, so they are kept plain.
"""

from __future__ import annotations

from gpdpr.tre.query.nodes import problem

MAX_LENGTH = 63
RULE = f"a lower-case letter, then lower-case letters, digits or _ (at most {MAX_LENGTH})"
# Names the service gives columns of what a run makes, or the dataset's own attributes.
RESERVED = frozenset(
    {
        "patient_id",
        "population",
        "variables",
        "tables",
        "disclosure",
        "measure",
        "interval_start",
        "interval_end",
        "numerator",
        "denominator",
        "patients",
    }
)
_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz")
_REST = _FIRST | frozenset("0123456789_")


def check_name(name: object, what: str, at: str | None) -> str:
    """`name` if it keeps the rule; else a DefinitionError saying what, where, and the rule."""
    if not isinstance(name, str):
        raise problem(at, f"{what} name must be text, not {type(name).__name__}")
    ok = 0 < len(name) <= MAX_LENGTH and name[0] in _FIRST and all(c in _REST for c in name)
    if not ok:
        raise problem(at, f"{what} name {shown(name)} must be {RULE}")
    if name in RESERVED:
        raise problem(
            at,
            f"{what} name {name!r} is reserved (the service names a column {name}); choose another",
        )
    return name


def shown(text: str, most: int = 40) -> str:
    """Text from a definition, quoted and cut short, for a message."""
    return repr(text[:most]) + ("..." if len(text) > most else "")
