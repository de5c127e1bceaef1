"""What every engine shares: the views in, the `Results` out, and the service's types for
them. All engines take the same project views (a `LakeViews` plan over the lake's files, which
the engine makes itself; or Arrow tables made already, one per table the definition reads) and
give the same `Results`, typed the same way, so that what a definition means does not depend on
where it ran.

DuckDB (`engines.duckdb`), embedded, is the default. Spark (`engines.spark`) is for more than
one machine. Both run only SQL the compiler wrote (engines/sql.py; `engines.guard` checks it
before it runs), sandboxed, within a time limit (`RUN_SECONDS`) and DuckDB within a memory
limit (`MEMORY`); dummy runs go through the same engines.

An engine computes a dataset (one row per patient) and measures (counts per interval and
group); aggregate tables of the dataset are made by release control (`tre/release/`), from
`Results.dataset`, not here.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from gpdpr.errors import UserError
from gpdpr.tre.engines import sql
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import BOOL, DATE, FLOAT, INT, PATIENT_ID, PATIENT_KEY

ARROW_TYPES = {BOOL: pa.bool_(), INT: pa.int64(), FLOAT: pa.float64(), DATE: pa.date32()}


def arrow_type(kind: str) -> pa.DataType:
    return ARROW_TYPES.get(kind, pa.string())


@dataclass(frozen=True)
class LakeViews:
    """A project's views as queries over one lake version's files, made inside the engine (see
    `tre.views.plan`): nothing row-level is read into Python to make them.

    Each engine reads `sources` under the names `source_<table>`, which no compiled query may
    name (the guard allows the view names only); makes `people` (each person in the
    population once, by lake pseudonym) into a table with each person's whole-number key; and
    defines each view by its SQL over those. Every pseudonym the project sees (of a person, a
    member of staff, a postcode) is made from the lake's by the engine, keyed by `project_key`
    (see `tre.views.key_table`)."""

    sources: Mapping[str, ds.Dataset]  # lake table -> its files at the run's lake version
    # `patient` and `person`: lake pseudonyms never to be shown (opt-outs), and their numbers
    excluded: pa.Table
    # SQL: each person in the population once: `patient` (their lake pseudonym), `person`
    # (what views join them by) and the patients' fields in `shown`
    people: str
    views: Mapping[str, str]  # view table -> SQL: patient_id (the key), then its columns
    mapped: Mapping[str, tuple[str, ...]]  # pseudonym column -> the lake tables it is read from
    project_key: bytes = field(repr=False)  # makes the project's pseudonyms; never shown
    salt: str = field(default_factory=lambda: secrets.token_hex(16))  # the run's, for its uses
    shown: tuple[str, ...] = ()  # the patients' fields `people` has, for the views
    # whether the lake's rows carry people's numbers (lake.tables.PERSON), which `people`
    # then joins by; else by pseudonym (a lake made before they had numbers)
    numbered: bool = True


# What every engine runs on: views already made (tests, dummy data), or a plan to make them.
Views: TypeAlias = Mapping[str, pa.Table] | LakeViews


@dataclass(frozen=True)
class Results:
    """What a run computed, before disclosure control: none of it leaves as it is."""

    # One row per patient: `patient_id` (the run's whole-number key of the person, which means
    # nothing outside the run), then each variable. It stays inside: only the tables made from
    # it leave, so no pseudonym of its people is made at all (each would be an HMAC per row).
    dataset: pa.Table | None
    measures: dict[str, pa.Table]  # measure name -> interval, groups, numerator, denominator
    # A use token for everyone whose record the run read (see `RunUses`); None when the views
    # were handed over ready-made.
    uses: RunUses | None = None


@dataclass(frozen=True)
class RunUses:
    """Whom a run read, as the engine gives it: a token per person, the custodian's
    `use_token` of the person's project pseudonym under the run's `salt` (random, one per
    run, so that two runs' tokens never match), of which the first 16 bytes are kept. `tokens`
    are those bytes as rows of two big-endian whole numbers, in ascending order (see
    `transparency.uses`)."""

    salt: str  # 32 hex digits
    tokens: np.ndarray  # shape (people, 2), dtype >u8, sorted


def run_uses(salt: str, tokens: pa.Array | pa.ChunkedArray) -> RunUses:
    """The engine's tokens (16 bytes each, in any order) as `RunUses`."""
    chunks = tokens.chunks if isinstance(tokens, pa.ChunkedArray) else [tokens]
    found = np.concatenate([np.empty(0, "S16"), *(_sixteen_bytes(c) for c in chunks)])
    # Sorted (in the copy just made) as 16-byte strings, which compare byte by byte as
    # big-endian numbers do: at 10 million people a quarter of the time of sorting them as
    # pairs of numbers (np.lexsort).
    found.sort()
    return RunUses(salt, found.view(">u8").reshape(-1, 2))


def _sixteen_bytes(tokens: pa.Array) -> np.ndarray:
    """An engine's tokens as 16-byte strings, read where they lie: each must be 16 bytes, and
    none null."""
    if tokens.null_count:
        raise ValueError("a run's use tokens have a null among them")
    if not len(tokens):
        return np.empty(0, "S16")
    if pa.types.is_fixed_size_binary(tokens.type) and tokens.type.byte_width == 16:
        body = tokens.buffers()[1]
        return np.frombuffer(body, "S16", count=len(tokens), offset=tokens.offset * 16)
    if not pa.types.is_binary(tokens.type):
        tokens = tokens.cast(pa.binary())  # what cannot be bytes is refused here
    at = tokens.offset
    offsets = np.frombuffer(tokens.buffers()[1], np.int32)[at : at + len(tokens) + 1]
    if not (np.diff(offsets) == 16).all():
        raise ValueError("a run's use token is not 16 bytes long")
    body = tokens.buffers()[2]
    return np.frombuffer(body, "S16", count=len(tokens), offset=int(offsets[0]))


class Engine(Protocol):
    name: str

    def run(self, definition: n.Definition, views: Views) -> Results: ...


def intervals_table(intervals: n.Intervals) -> pa.Table:
    rows = sql.interval_rows(intervals)
    return pa.table(
        {
            "k": pa.array(range(len(rows)), pa.int64()),  # the interval's number, from 0
            "interval_start": pa.array([r[0] for r in rows], pa.date32()),
            "interval_end": pa.array([r[1] for r in rows], pa.date32()),
        }
    )


def dataset_schema(definition: n.Definition) -> pa.Schema:
    return pa.schema(
        [(PATIENT_ID, pa.int64())]
        + [(name, arrow_type(s.type)) for name, s in definition.variables]
    )


def measure_schema(measure: n.Measure) -> pa.Schema:
    return pa.schema(
        [("interval_start", pa.date32()), ("interval_end", pa.date32())]
        + [(name, arrow_type(s.type)) for name, s in measure.group_by]
        + [("numerator", pa.int64()), ("denominator", pa.int64())]
    )


def keyed(views: Mapping[str, pa.Table]) -> dict[str, pa.Table]:
    """The views as the compiled SQL reads them, with each patient's whole-number key in place
    of `patient_id`. Views made by `views.build` carry the keys; others (made by hand) are
    given them here (the patient's row in the patients view): a row whose patient is not in
    the patients view gets none (null), so a row has a key if and only if its patient is in
    the patients view."""
    patients = views["patients"]
    ids = patients.column(PATIENT_ID)
    people = patients.num_rows
    given = people > 0 and all(PATIENT_KEY in v.column_names for v in views.values())
    if (
        given
        and patients.column(PATIENT_KEY).null_count == 0
        and all(_within(view.column(PATIENT_KEY), people) for view in views.values())
        # The keys must number the people 0 .. people - 1, once each, to stand for them, and
        # every other row's key must be one of them.
        and len(np.unique(patients.column(PATIENT_KEY).to_numpy())) == people
    ):
        key_of = {name: view.column(PATIENT_KEY) for name, view in views.items()}
    else:
        key_of = {
            name: pc.index_in(view.column(PATIENT_ID), value_set=ids.combine_chunks())
            for name, view in views.items()
        }
    out = {}
    for name, view in views.items():
        plain = view.drop_columns([c for c in (PATIENT_ID, PATIENT_KEY) if c in view.column_names])
        out[name] = plain.add_column(0, PATIENT_ID, key_of[name].cast(pa.int64()))
    return out


def _within(keys: pa.ChunkedArray, people: int) -> bool:
    """Whether every key is a whole number from 0 to people - 1 (the patients view's have no
    nulls)."""
    lowest, highest = pc.min_max(keys).values()
    return lowest.as_py() is None or (lowest.as_py() >= 0 and highest.as_py() < people)


# An engine's sandbox's query: a compiled query's answer.
Ask = Callable[[sql.Query], pa.Table]


def dataset_answer(ask: Ask, definition: n.Definition, dialect: sql.Dialect) -> pa.Table:
    """A definition's dataset as a run keeps it: by the run's whole-number key of each person
    (see `Results.dataset`)."""
    return conform(ask(sql.dataset_query(definition, dialect)), dataset_schema(definition))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """An engine's answer under the definition's names, by position (the SQL's columns have the
    compiler's names), in the service's types (engines differ in integer widths, decimal sums
    and string types)."""
    if table.num_columns != len(schema):
        raise AssertionError(f"{table.num_columns} columns came back for {len(schema)}")
    return pa.table([table.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


# ---- limits ------------------------------------------------------------------------------------

RUN_SECONDS = "GPDPR_TRE_RUN_SECONDS"  # how long one run may compute (each engine)
MEMORY = "GPDPR_TRE_MEMORY"  # how much memory DuckDB may use for one run
DEFAULT_SECONDS = 1800.0
DEFAULT_MEMORY = "2GB"  # beyond it DuckDB spills to the run's own folder
_MEMORY = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?\s?(KB|MB|GB|TB|KiB|MiB|GiB|TiB)")


def run_seconds(given: float | None = None) -> float:
    """The time limit: `given`, else GPDPR_TRE_RUN_SECONDS, else DEFAULT_SECONDS."""
    text = os.environ.get(RUN_SECONDS)
    try:
        seconds = float(given if given is not None else text or DEFAULT_SECONDS)
    except ValueError:
        raise UserError(f"{RUN_SECONDS} is a number of seconds, not {text!r}") from None
    if not 0 < seconds <= 7 * 24 * 3600 or math.isnan(seconds):
        raise UserError(
            f"a run's time limit is more than 0 seconds and at most a week, not {seconds}"
        )
    return seconds


def memory(given: str | None = None) -> str:
    """The memory limit, such as 4GB or 512MB: `given`, else GPDPR_TRE_MEMORY, else
    DEFAULT_MEMORY."""
    found = given or os.environ.get(MEMORY) or DEFAULT_MEMORY
    if not _MEMORY.fullmatch(found):
        raise UserError(
            f"a memory limit is a size such as 4GB or 512MB (for {MEMORY}), not {found!r}"
        )
    return found


class RunFailed(UserError):
    """The engine could not finish a run. The message never carries the engine's own (which may
    quote the data): only which limit was met, or that the engine failed."""


def too_long(seconds: float) -> RunFailed:
    return RunFailed(
        f"the run took longer than its time limit of {seconds:g} seconds ({RUN_SECONDS}) and "
        "was stopped"
    )


def failed(engine: str, error: BaseException) -> RunFailed:
    return RunFailed(
        f"the run failed in {engine} ({type(error).__name__}); nothing was kept. A definition "
        "that passes its checks should run: if it fails on dummy data too, report it"
    )
