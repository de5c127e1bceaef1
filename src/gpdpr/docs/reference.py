"""Reference pages generated from the code itself: the tables a study reads (the research
environment's schema, with each column's specification fields) and the query language (every
public name, its signature and docstring). Markdown out; nothing in it is typed by hand."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from gpdpr.tre.query import language, schema

TYPE_WORDS = {
    schema.BOOL: "yes/no",
    schema.INT: "whole number",
    schema.FLOAT: "number",
    schema.STR: "text",
    schema.DATE: "date",
    schema.SNOMED: "SNOMED CT code",
    schema.DMD: "dm+d code",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def tables() -> str:
    """Every table a definition can read, one section each, its columns in a table."""
    out: list[str] = []
    for table in schema.TABLES.values():
        rows = "one row per patient" if table.one_row_per_patient else "many rows per patient"
        period = (
            f" An agreement's period applies to `{table.date}`."
            if table.date
            else " No period applies: one row per patient."
        )
        out += [
            f"## `{table.name}`",
            "",
            f"From the lake table `{table.lake}`: {rows}.{period} Every table also has "
            f"`{schema.PATIENT_ID}`, the project's own pseudonym for the patient.",
            "",
            "| column | type | what it holds | specification fields an agreement must grant |",
            "|---|---|---|---|",
        ]
        for column in table.columns.values():
            needs = ", ".join(f"`{table.lake}.{f}`" for f in column.needs)
            out.append(
                f"| `{column.name}` | {TYPE_WORDS.get(column.type, column.type)} | "
                f"{_cell(column.description)} | {needs} |"
            )
        out.append("")
    return "\n".join(out)


def _signature(name: str, thing: Callable[..., Any]) -> str:
    try:
        shown = str(inspect.signature(thing))
    except (TypeError, ValueError):
        return name
    shown = shown.replace("self, ", "").replace("(self)", "()").replace("'", "")
    return f"{name}{shown}"


def _doc(thing: Any) -> str:
    """The docstring as one paragraph (a list item holds no line breaks)."""
    text = " ".join((inspect.getdoc(thing) or "").split())
    return text or "(no description yet)"


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined on `cls` or its query-language bases."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ != language.__name__:
            continue
        for name, member in vars(klass).items():
            if name in INTERNAL or name.startswith("_"):
                continue
            if callable(member) or isinstance(member, property):
                found[name] = member
    return sorted(found.items())


INTERNAL = {"node"}  # the query graph behind a value: for the service, not for a study


def language_reference() -> str:
    """Every public name of the language; then what any value (a Series) and any table (a
    Frame) can do, which is most of it."""
    out: list[str] = []
    tables_seen: set[type] = set()
    for name in sorted(language.__all__, key=str.lower):
        thing = getattr(language, name)
        if inspect.isclass(thing):
            out += [f"## `{name}`", "", _doc(thing), ""]
            out += _method_list(thing)
        elif callable(thing):
            out += [f"## `{_signature(name, thing)}`", "", _doc(thing), ""]
        elif isinstance(thing, language.Frame):
            kind = type(thing)
            out += [
                f"## `{name}`",
                "",
                f"The table `{name}`: its columns are in [Tables](tables.md#{name}); what any "
                "table can do is under `Frame` below.",
                "",
            ]
            if kind not in tables_seen and kind is not language.Frame:
                tables_seen.add(kind)
                out += _method_list(kind, own=True)
        else:
            out += [f"## `{name}`", "", _doc(type(thing)), ""]
    for cls, about in (
        (language.Frame, "What every table, and every table filtered or sorted, can do."),
        (language.Series, "What every value can do: a column, or one made from columns."),
        (language.Duration, "A length of time: `days(n)`, `weeks(n)`, `months(n)`, `years(n)`."),
    ):
        out += [f"## `{cls.__name__}`", "", about, "", *_method_list(cls)]
    return "\n".join(out)


def _method_list(cls: type, own: bool = False) -> list[str]:
    """`cls`'s methods, or with `own` only those it adds to its bases."""
    out = []
    members = _members(cls)
    if own:
        members = [(name, m) for name, m in members if name in vars(cls)]
    for member_name, member in members:
        if isinstance(member, property):
            out += [f"- `.{member_name}`: {_doc(member)}"]
        else:
            out += [f"- `.{_signature(member_name, member)}`: {_doc(member)}"]
    return [*out, ""] if out else []


PAGES: dict[str, Callable[[], str]] = {"tables": tables, "language": language_reference}
